"""Finding lm-eval tasks by name, and what a process (and the harness cache) keeps of them, so a run does not pay
for them again.

- `find_entry`: lm-eval's index entry of a name (your include_path first);
- `loaded_tasks`: a world's tasks are loaded once per process (a sweep worker runs every run of a world; loading
  them took ~2 s per run), reloaded when a local file they read changes;
- `known_yaml` / `remember_yaml`: which lm-eval YAML defines a task name, remembered in the harness cache per
  lm-eval version (finding it scans lm-eval's ~14k YAML files: ~1 s per task in every new process).
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.lmeval_checks import broken_yaml
from harness import lmeval_api
from harness.errors import HarnessError, unknown
from harness.world import cache_root

_NAME_LINE = re.compile(r"^['\"]?(?:task|group)['\"]?:[ \t]*['\"]?([^'\"\s#]+)", re.M)  # `"task": "x"` too

_TASKS: dict[tuple, dict[str, Any]] = {}
FEWSHOT_SEED = 1234  # load_task's seed (lm_eval.simple_evaluate's default)


def _stamp(sources: list) -> tuple:
    """Size and mtime of every local file the tasks read (data files, your own task YAMLs)."""
    paths: list[Path] = []
    for src in sources:
        paths += [Path(p).expanduser() for p in (src.data_files or {}).values()]
        if src.include_path and Path(src.include_path).expanduser().is_dir():
            paths += sorted(Path(src.include_path).expanduser().rglob("*.yaml"))
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:  # load_task names the missing file
            continue
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


def loaded_tasks(sources: list, workdir: Path) -> dict[str, Any]:
    """{task name: RealTask or RealGroup} of `sources`, loaded once per process and preflighted every time (the
    environment, e.g. NLTK_DATA, may have changed); a reused task's few-shot sampler is reseeded, so it draws
    the exemplars a freshly loaded one would."""
    from benchmarks.lmeval_tasks import load_task

    key = (str(Path(workdir).resolve()), tuple(s.model_dump_json() for s in sources), _stamp(sources))
    real = _TASKS.get(key)
    if real is None:
        real = {s.task: load_task(s, workdir) for s in sources}
        _TASKS.clear()  # one world per worker process is the common case: keep memory flat
        _TASKS[key] = real
    else:
        for rt in real.values():
            for leaf in getattr(rt, "leaves", [rt]):
                if leaf.source.num_fewshot > 0:
                    leaf.task.set_fewshot_seed(FEWSHOT_SEED)
    for rt in real.values():
        rt.preflight()
    return real


def _index_file() -> Path:
    return cache_root() / "lmeval-index" / f"lm-eval-{version('lm-eval')}.json"


def _read_index() -> dict[str, str]:
    try:
        return json.loads(_index_file().read_text())
    except (OSError, ValueError):
        return {}


def known_yaml(name: str) -> Path | None:
    """The lm-eval YAML last found to define task `name` (under this lm-eval version), if it still exists."""
    path = _read_index().get(name)
    return Path(path) if path and Path(path).is_file() else None


def remember_yaml(name: str, path: Path) -> None:
    """Record that lm-eval's `path` defines `name` (written atomically; a lost race only costs a rescan)."""
    index = _read_index() | {name: str(path)}
    target = _index_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, sort_keys=True))
        os.replace(tmp, target)
    except OSError:  # a read-only cache: the scan just runs again next time
        pass


def find_entry(name: str, include_path: str | None = None) -> Any:
    """lm-eval's index entry for `name` (your include_path first); a text scan finds most names in 0.4 s instead
    of indexing for 9 s."""
    tasks_dir = Path(importlib.import_module("lm_eval.tasks").__file__).parent
    roots = ([Path(include_path).expanduser()] if include_path else []) + [tasks_dir]
    if include_path and not roots[0].is_dir():
        raise HarnessError(f"include_path {include_path!r} is not a folder; point it at your lm-eval task YAMLs")

    def defined_in(path: Path) -> Any:
        text = path.read_text(encoding="utf-8", errors="replace")
        if name in text and any(m.group(1) == name for m in _NAME_LINE.finditer(text)):
            try:
                found = lmeval_api.index_config(lmeval_api.load_yaml(path), path)
            except Exception as e:  # lm-eval's index skips unparsable files too (tasks/_index.py::build)
                if path in own:  # but a broken file of yours that defines the task is the answer, not a skip
                    raise broken_yaml(path, name, e) from None
                return None
            return found.get(name)
        return None

    own = [p for p in sorted(roots[0].rglob("*.yaml"), key=lambda p: p.as_posix())] if include_path else []
    for path in own:  # your own tasks win
        if (entry := defined_in(path)) is not None:
            return entry
    known = known_yaml(name)  # where an earlier process found it among lm-eval's files
    if known is not None and (entry := defined_in(known)) is not None:
        return entry
    for path in sorted(tasks_dir.rglob("*.yaml"), key=lambda p: p.as_posix()):  # lm-eval's own order
        if (entry := defined_in(path)) is not None:
            remember_yaml(name, path)
            return entry
    index = dict(_full_index())  # tags and anything the scan misses
    if include_path:  # your own tasks' entries (and tags) win over lm-eval's
        index.update(lmeval_api.index_folders([Path(include_path).expanduser()]))
    if name not in index:
        for path in (p for p in own if name in p.read_text(encoding="utf-8", errors="replace")):
            try:  # a file of yours that names the task but that lm-eval's index skipped as unparsable
                lmeval_api.load_yaml(path)
            except Exception as e:
                raise broken_yaml(path, name, e) from None
        import difflib
        near = difflib.get_close_matches(name, index, n=6, cutoff=0.0)  # listing all 14k names helps nobody
        raise unknown("lm-eval task", name, near, fix=f"(the closest of {len(index)}; `lm-eval ls tasks` lists all)")
    return index[name]


@functools.cache
def _full_index() -> dict:
    from lm_eval.tasks import TaskManager
    return TaskManager().task_index
