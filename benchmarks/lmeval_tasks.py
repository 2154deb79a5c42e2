"""Real lm-eval tasks (gsm8k, arc_easy, ifeval, ...) as harness tasks: prompt, label and reward come from lm-eval.

The installed task YAML is loaded through a small override YAML (local data files, a unique name, num_fewshot,
an explicit max_gen_toks): the harness trains on exactly the prompt lm-eval evaluates on, and `RealTask.score`
runs the task's own filters and `process_results`, so the training reward is lm-eval's per-example metric.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import HarnessError, unknown

# Optional packages that lm-eval task modules import at load time, and the lm-eval extra that installs them.
_OPTIONAL_DEPS = {"langdetect": "ifeval", "immutabledict": "ifeval", "math_verify": "math",
                  "sympy": "math", "antlr4": "math"}
_NAME_LINE = re.compile(r"^['\"]?(?:task|group)['\"]?:[ \t]*['\"]?([^'\"\s#]+)", re.M)  # `"task": "x"` too
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_LETTER = re.compile(r"\(?([A-Z])(?:[).:\s]|$)")


class TaskSource(BaseModel):
    """Which lm-eval task to load, from which data, and which of its filters/metrics is the reward."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    task: str
    """lm-eval task name, e.g. "gsm8k", "arc_easy", "ifeval" (groups such as mmlu are not supported yet)."""
    data_files: dict[str, str] | None = None
    """lm-eval split name -> local .jsonl/.json/.parquet file; None: the task's own dataset (HF cache)."""
    filter: str | None = None
    """Filter ensemble whose output is scored (gsm8k: "flexible-extract"); None: the task's first."""
    metric: str | None = None
    """Per-example metric used as the reward (gsm8k: "exact_match", ifeval: "prompt_level_strict_acc");
    None: the task's first."""
    max_gen_toks: int | None = Field(default=None, gt=0)
    """Overrides generation_kwargs.max_gen_toks (gsm8k's YAML has none; then lm-eval's default 256)."""
    num_fewshot: int = Field(default=0, ge=0)
    """Few-shot examples in each prompt (the task YAML's own num_fewshot is overridden)."""
    include_path: str | None = None
    """A folder of your own lm-eval task/group YAMLs (e.g. a task lm-eval lacks), searched before lm-eval's; a relative
    path that is not a folder here but is one of the project's (benchmarks/smollm2_tasks) names the shipped one."""

    @field_validator("include_path")
    @classmethod
    def _shipped_folder(cls, value: str | None) -> str | None:
        # Shipped presets name their task folders relative to the project, so they work from any directory.
        if value is None or Path(value).expanduser().is_absolute() or Path(value).is_dir():
            return value
        shipped = Path(__file__).resolve().parent.parent / value
        return str(shipped) if shipped.is_dir() else value


class RealTask:
    """One loaded lm-eval task: its docs, prompts, expert labels, and its own per-example scoring."""

    def __init__(self, source: TaskSource, name: str, task: Any, yaml_path: Path):
        from lm_eval.defaults import default_gen_kwargs
        from lm_eval.filters import build_filter_ensemble

        cfg = task.config
        self.source, self.name, self.task, self.yaml_path = source, name, task, yaml_path
        self.output_type: str = cfg.output_type
        self.version = task.VERSION
        self.target_delimiter: str = cfg.target_delimiter  # lm-eval renders a solved example as prompt + this + label
        filters = {f["name"]: f["filter"] for f in cfg.filter_list or []} or {"none": [{"function": "take_first"}]}
        self.filter_name = _pick("lm-eval filter", source.filter, list(filters), source.task)
        self._filter = build_filter_ensemble(self.filter_name, [
            (f["function"], {k: v for k, v in f.items() if k != "function"}) for f in filters[self.filter_name]])
        self.metric = _pick("lm-eval metric", source.metric, list(task.aggregation()), source.task)
        # Multiple-choice tasks have no generation kwargs; the harness still samples from them.
        self.gen_kwargs: dict = dict(cfg.generation_kwargs or default_gen_kwargs(cfg.fewshot_delimiter))
        self.gen_kwargs["max_gen_toks"] = source.max_gen_toks or self.gen_kwargs.get("max_gen_toks")

    def eval_docs(self) -> list[dict]:
        """The docs lm-eval evaluates (its test split, else its validation split)."""
        return list(self.task.eval_docs)

    def train_docs(self) -> list[dict]:
        """The training split's docs (HarnessError if the task names no training split)."""
        if not self.task.has_training_docs():
            raise HarnessError(f"lm-eval task {self.source.task!r} has no training split (it evaluates on "
                               f"{self.task.config.test_split!r}); train on another task's data")
        return list(self.task.training_docs())

    def prompt(self, doc: dict) -> str:
        """The context lm-eval sends the model for `doc` (plain text; exemplars from its seeded sampler if few-shot)."""
        return self.task.fewshot_context(doc, num_fewshot=self.source.num_fewshot,
                                         gen_prefix=self.task.doc_to_prefix(doc))

    def label(self, doc: dict) -> str:
        """The expert answer text for `doc`: doc_to_target, or the gold choice's text for multiple choice."""
        if self.task.config.doc_to_choice is not None:
            return self.task.doc_to_choice(doc)[self._gold_index(doc)]
        target = self.task.doc_to_target(doc)
        target = target[0] if isinstance(target, list) else target  # several acceptable targets: the first
        if not isinstance(target, str):  # ifeval's doc_to_target is the constant 0
            raise HarnessError(f"lm-eval task {self.source.task!r} has no label text (doc_to_target gives "
                               f"{target!r}); label it with a teacher model instead")
        return target

    def score(self, doc: dict, response: str) -> float:
        """The task's own per-example score of one response (multiple choice: gold choice text or letter)."""
        if self.output_type == "multiple_choice":
            return self._choice_score(doc, response)
        resps: Any = [[response]]
        for make in self._filter.filters:  # FilterEnsemble.apply, over one instance
            resps = make().apply(resps, [doc])
        value = self.task.process_results(doc, [list(resps)[0]])[self.metric]
        if isinstance(value, list):  # ifeval's inst_level_*: one bool per instruction
            return sum(map(float, value)) / max(len(value), 1)
        return float(value)

    def preflight(self) -> None:
        """Raise a one-line HarnessError if an optional package or nltk data this task needs is missing."""
        _preflight(self.yaml_path, self.source.task)

    def doc_refs(self) -> list[tuple[str, int]]:
        """(lm-eval task name, doc id) of each eval doc, in `eval_docs` order."""
        return [(self.name, i) for i in range(len(self.task.eval_docs))]

    def lm_tasks(self) -> dict[str, Any]:
        """The lm-eval Tasks that evaluate this task, by name."""
        return {self.name: self.task}

    def _gold_index(self, doc: dict) -> int:
        gold, choices = self.task.doc_to_target(doc), self.task.doc_to_choice(doc)
        gold = gold[0] if isinstance(gold, list) else gold  # several golds: the first
        return choices.index(gold) if isinstance(gold, str) else int(gold)

    def _choice_score(self, doc: dict, response: str) -> float:
        # lm-eval scores multiple choice by log-likelihood, not by text: a response counts if it starts
        # with the gold choice's text (the longest matching choice wins) or with the gold's letter (A, B, ...).
        text, choices, gold = response.strip(), self.task.doc_to_choice(doc), self._gold_index(doc)
        hits = [i for i, c in enumerate(choices) if c.strip() and text.lower().startswith(c.strip().lower())]
        if hits:
            return float(max(hits, key=lambda i: len(choices[i].strip())) == gold)
        letter = _LETTER.match(text)
        return float(letter is not None and ord(letter.group(1)) - ord("A") == gold)


def load_task(source: TaskSource, workdir: Path) -> RealTask:
    """Load an lm-eval task (or each task of a group) under the name harness_real_<task>, on local files if given."""
    from lm_eval.defaults import DEFAULT_MAX_GEN_TOKS, default_gen_kwargs
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = find_entry(source.task, source.include_path)
    if entry.kind in (Kind.GROUP, Kind.TAG):
        if source.data_files is not None:
            raise HarnessError(f"lm-eval group {source.task!r} reads each subtask's own dataset: drop data_files "
                               f"(stage them with `harness fetch`), or list a subtask with its files")
        from benchmarks.lmeval_groups import RealGroup, leaf_tasks
        leaves = [load_task(source.model_copy(update={"task": t}), workdir)
                  for t in dict.fromkeys(leaf_tasks(source.task, source.include_path))]
        return RealGroup(source, leaves)  # the same interface as RealTask
    if entry.kind is not Kind.TASK:
        raise HarnessError(f"lm-eval task {source.task!r} is a Python-class task, not supported yet; pick a YAML task")
    base = load_yaml(entry.yaml_path, resolve_func=False)
    if base.get("output_type") not in ("generate_until", "multiple_choice"):
        raise HarnessError(f"lm-eval task {source.task!r} has output_type {base.get('output_type')!r}; "
                           f"only generate_until and multiple_choice tasks are supported")
    _preflight(entry.yaml_path, source.task)  # before lm-eval imports the task's modules

    name = f"harness_real_{source.task}"
    # lm-eval merges an include shallowly (tasks/_yaml_loader.py::load_yaml, `merged.update(cfg)`),
    # so every overridden mapping is written whole.
    override: dict[str, Any] = {"include": str(entry.yaml_path), "task": name, "num_fewshot": source.num_fewshot}
    if base["output_type"] == "generate_until":
        gen = dict(base.get("generation_kwargs") or default_gen_kwargs(base.get("fewshot_delimiter", "\n\n")))
        # Written explicitly so that every lm-eval backend (HFLM, vLLM) and the harness's rollouts use one
        # budget; 256 is lm-eval's own default when the YAML has none (gsm8k).
        gen["max_gen_toks"] = source.max_gen_toks or gen.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS
        override["generation_kwargs"] = gen
    if source.data_files is not None:
        override.update(_data_overrides(source, base, workdir))
    (folder := Path(workdir) / "lmeval_tasks" / name).mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    try:
        task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    except ModuleNotFoundError as e:  # a dependency _preflight does not know about
        raise HarnessError(f"lm-eval task {source.task!r} needs the missing package {e.name!r}; pip install it") from e
    except (ConnectionError, FileNotFoundError) as e:  # offline with no cached copy of the hub dataset
        raise HarnessError(f"lm-eval task {source.task!r} could not read its dataset "
                           f"({type(e).__name__}); pass data_files with local copies of its splits") from e
    if getattr(task, "multiple_input", 0):
        raise HarnessError(f"lm-eval task {source.task!r} has one context per choice; not supported yet")
    if source.num_fewshot > 0:
        task.set_fewshot_seed(1234)  # simple_evaluate's default seed; evaluate() leaves the sampler unseeded
    return RealTask(source, name, task, Path(entry.yaml_path))


def _data_overrides(source: TaskSource, base: dict, workdir: Path) -> dict[str, Any]:
    """The dataset keys that point the task at local files, after checking every named split has one."""
    files = {split: Path(p).expanduser().resolve() for split, p in (source.data_files or {}).items()}
    named = {base.get(k) for k in _SPLIT_KEYS} | {(base.get("fewshot_config") or {}).get("split")}
    for split in sorted(s for s in named if s):
        if split not in files:  # lm-eval reads every named split at build time, even at 0-shot
            raise HarnessError(f"lm-eval task {source.task!r} needs split {split!r} but data_files has only "
                               f"{sorted(files)}; add {split}: <file> to data_files")
    for split, path in ((s, p) for s, p in files.items() if not p.is_file()):
        raise HarnessError(f"data file for split {split!r} of {source.task!r} not found: {path}; fix the path")
    kinds = {_FORMATS.get("".join(p.suffixes[-1:]).lower()) for p in files.values()}
    if None in kinds or len(kinds) != 1:
        raise HarnessError(f"data_files of {source.task!r} must all be .jsonl/.json or all .parquet, "
                           f"got {sorted(p.name for p in files.values())}")
    return {"dataset_path": kinds.pop(), "dataset_name": None,
            # The arrow cache goes beside the YAML: never into the user's ~/.cache for local files.
            "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()},
                               "cache_dir": str(Path(workdir).resolve() / "datasets_cache")}}


def find_entry(name: str, include_path: str | None = None) -> Any:
    """lm-eval's index entry for `name` (your include_path first); a text scan finds most names in 0.4 s instead
    of indexing for 9 s."""
    from lm_eval.tasks._index import TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks_dir = Path(importlib.import_module("lm_eval.tasks").__file__).parent
    roots = ([Path(include_path).expanduser()] if include_path else []) + [tasks_dir]
    if include_path and not roots[0].is_dir():
        raise HarnessError(f"include_path {include_path!r} is not a folder; point it at your lm-eval task YAMLs")
    own = [p for p in sorted(roots[0].rglob("*.yaml"), key=lambda p: p.as_posix())] if include_path else []
    for path in own + sorted(tasks_dir.rglob("*.yaml"), key=lambda p: p.as_posix()):  # lm-eval's own order
        text = path.read_text(encoding="utf-8", errors="replace")
        if name in text and any(m.group(1) == name for m in _NAME_LINE.finditer(text)):
            found: dict = {}
            try:
                TaskIndex.process_cfg(load_yaml(path, resolve_func=False), path, found)
            except Exception:  # lm-eval's index skips unparsable files too (tasks/_index.py::build)
                continue
            if name in found:
                return found[name]
    index = dict(_full_index())  # tags and anything the scan misses
    if include_path:  # your own tasks' entries (and tags) win over lm-eval's
        index.update(TaskIndex.build([Path(include_path).expanduser()]))
    if name not in index:
        import difflib
        near = difflib.get_close_matches(name, index, n=6, cutoff=0.0)  # listing all 14k names helps nobody
        raise unknown("lm-eval task", name, near, fix=f"(the closest of {len(index)}; `lm-eval ls tasks` lists all)")
    return index[name]


@functools.cache
def _full_index() -> dict:
    from lm_eval.tasks import TaskManager
    return TaskManager().task_index


def _preflight(yaml_path: Path, task: str) -> None:
    """Check the optional imports and nltk data of the task's modules by reading them, not importing them."""
    from lm_eval.tasks._yaml_loader import load_yaml

    folders, path = [], Path(yaml_path)
    while True:  # the task's folder and those of the YAMLs it includes
        folders.append(path.parent)
        inc = load_yaml(path, resolve_func=False, recursive=False).get("include")
        if not isinstance(inc, str):
            break
        path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
    source = "\n".join(p.read_text(encoding="utf-8", errors="replace") for d in folders for p in d.glob("*.py"))
    for module, extra in _OPTIONAL_DEPS.items():
        if re.search(rf"^\s*(?:import|from)\s+{module}\b", source, re.M) and importlib.util.find_spec(module) is None:
            raise HarnessError(f"lm-eval task {task!r} needs {module}; install it with "
                               f'pip install "lm-eval[{extra}]"')
    if re.search(r"^\s*import antlr4", source, re.M) and \
            not importlib.metadata.version("antlr4-python3-runtime").startswith("4.11"):
        raise HarnessError(f'lm-eval task {task!r} needs antlr4-python3-runtime 4.11; pip install "lm-eval[math]"')
    if "punkt" not in source:
        return
    import nltk
    # nltk reads NLTK_DATA once, at import; honour a value set later in this process too.
    for d in reversed([d for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]):
        if d not in nltk.data.path:
            nltk.data.path.insert(0, d)
    try:  # lm-eval's ifeval downloads punkt_tab at import when it is missing: check first, never import blind
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise HarnessError(f"lm-eval task {task!r} needs nltk's punkt_tab data, which is missing (lm-eval would try "
                           f"to download it); set NLTK_DATA to a folder holding tokenizers/punkt_tab or run "
                           f"`harness fetch`") from None


def _pick(kind: str, chosen: str | None, valid: list[str], task: str) -> str:
    if chosen is None:
        return valid[0]
    if chosen not in valid:
        raise unknown(kind, chosen, valid, fix=f"(of task {task!r})")
    return chosen
