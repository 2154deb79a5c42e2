"""The private parts of lm-eval the harness uses, in one place: a release that moves them fails here, loudly.

Checked against the lm-eval versions in CHECKED (tests/test_dependency_apis.py pins the installed one and that every
name below still exists). lm-eval's public task API (`TaskManager`) loads a task, which imports its Python modules
and may download its dataset; finding a task's YAML, expanding a group and reading a file's `include` chain must do
neither, so they use lm-eval's own index and YAML loader (`lm_eval.tasks._index`, `lm_eval.tasks._yaml_loader`).
Index entries (`TaskManager().task_index`'s values) are read by their fields `kind`, `yaml_path`, `cfg`, `tags`.
Importing this module does not import lm-eval.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator

CHECKED = ((0, 4, 13), (0, 4, 14))  # [lowest, highest) lm-eval release these adapters were read against


def load_yaml(path: str | Path, *, recursive: bool = True) -> dict[str, Any]:
    """A task YAML as lm-eval reads it (its `include` chain merged unless `recursive=False`), `!function` unresolved."""
    from lm_eval.tasks._yaml_loader import load_yaml as _load
    return _load(path, resolve_func=False, recursive=recursive)


def index_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """{name: index entry} of what one YAML's config defines (a task, a group, and the tags it joins)."""
    from lm_eval.tasks._index import TaskIndex
    found: dict[str, Any] = {}
    TaskIndex.process_cfg(cfg, path, found)
    return found


def index_folders(paths: Iterable[Path]) -> dict[str, Any]:
    """{name: index entry} of every YAML under `paths`, as lm-eval indexes its own tasks (unparsable files skipped)."""
    from lm_eval.tasks._index import TaskIndex
    return TaskIndex.build(list(paths))


def kind(entry: Any) -> str:
    """An index entry's kind: "task" (a YAML task), "py_task" (a Python class), "group", "tag" or "unknown"."""
    return entry.kind.name.lower()


@contextlib.contextmanager
def request_bars_off() -> Iterator[None]:
    """Hide lm-eval's per-task 'building requests' progress bars for one block (build_all_requests has no switch)."""
    import lm_eval.api.task as task_mod
    orig = getattr(task_mod, "tqdm", None)
    if orig is not None:
        task_mod.tqdm = lambda *a, **k: orig(*a, **{**k, "disable": True})
    try:
        yield
    finally:
        if orig is not None:
            task_mod.tqdm = orig
