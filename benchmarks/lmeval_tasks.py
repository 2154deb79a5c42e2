"""Real lm-eval tasks (gsm8k, arc_easy, ifeval, ...) as harness tasks: prompt, label and reward come from lm-eval.

The installed task YAML is loaded through a small override YAML (local data files, a unique name, num_fewshot,
an explicit max_gen_toks): the harness trains on exactly the prompt lm-eval evaluates on, and `RealTask.score`
runs the task's own filters and `process_results`, so the training reward is lm-eval's per-example metric.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmarks.lmeval_checks import first_line, preflight, quiet_datasets, root_cause
from benchmarks.lmeval_lookup import find_entry
from harness import lmeval_api
from harness.errors import HarnessError, unknown
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_LETTER = re.compile(r"\(?([A-Z])(?:[).:\s]|$)")


class TaskSource(BaseModel):
    """Which lm-eval task to load, from which data, and which of its filters/metrics is the reward."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    task: str
    """lm-eval task, group or tag name, e.g. "gsm8k", "arc_easy", "ifeval", "mmlu" (a group is one task)."""
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
        # Shipped presets name their task folders relative to the project, so they work from any directory; a folder
        # found here is made absolute, since lm-eval resolves the staged task's `include:` from the staging folder.
        if value is None or Path(value).expanduser().is_absolute():
            return value
        if Path(value).expanduser().is_dir():
            return str(Path(value).expanduser().resolve())
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

    def prompt(self, doc: dict, system_instruction: str | None = None, chat: ChatTemplate | None = None) -> str:
        """The context lm-eval sends the model for `doc`, rendered by lm-eval's own `fewshot_context`.

        The task's description and `system_instruction` form the system message (plain text: they lead the
        context); `chat` (see `chat_template`) renders the messages as the model's chat template does, as
        `lm_eval.evaluator.evaluate(apply_chat_template=True)` does; exemplars come from the seeded sampler.
        """
        return self.task.fewshot_context(doc, num_fewshot=self.source.num_fewshot,
                                         system_instruction=system_instruction, apply_chat_template=chat is not None,
                                         chat_template=chat, gen_prefix=self.task.doc_to_prefix(doc))

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
        preflight(self.yaml_path, self.source.task)

    def check_doc(self, doc: dict, where: str) -> None:
        """Render `doc` (the first of `where`) as a run will: a file in another schema fails here in one line."""
        try:
            self.prompt(doc)
            try:
                label = self.label(doc)
            except HarnessError:  # a task without label text (IFEval): scored on a plain response
                label = "a"
            self.score(doc, label)
        except HarnessError:
            raise
        except Exception as e:  # jinja's "'question' is undefined", KeyError, TypeError from the task's own code
            fields = ", ".join(map(str, doc)) or "none"
            raise HarnessError(f"{where} does not fit lm-eval task {self.source.task!r} ({type(e).__name__}: "
                               f"{first_line(e)}); its rows have fields {fields}: give it in the task's hub "
                               f"schema") from None

    def data_file(self, split: str | None) -> str:
        """How to name a split's data to the user: its local file, else the task's hub dataset."""
        files = self.source.data_files or {}
        if split in files:
            return f"data file {files[split]!r} ({self.source.task} {split})"
        return f"the {split} split of {self.source.task!r}'s dataset"

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


ChatTemplate = Callable[..., str]  # (messages, add_generation_prompt=True) -> the rendered text


def chat_template(tokenizer: Any) -> ChatTemplate:
    """`tokenizer`'s chat template as lm-eval's HFLM applies it (models/huggingface.py::apply_chat_template).

    A generation prefix continues the last (assistant) message instead of opening a new one, and a template
    that rejects a system message is retried without it, as HFLM does.
    """
    def render(chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from jinja2.exceptions import TemplateError

        kw = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
              "continue_final_message": not add_generation_prompt}
        try:
            return tokenizer.apply_chat_template(chat_history, **kw)
        except TemplateError:
            return tokenizer.apply_chat_template([m for m in chat_history if m["role"] != "system"], **kw)
    return render


def stage_yaml(path: Path, text: str) -> None:
    """Write a staged task YAML only when its text changed, and atomically: a sweep's workers share the cache, and
    one that reads a file another is rewriting finds no task in it (lm-eval: "not a registered task")."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.yaml: lm-eval's folder scan skips it
    tmp.write_text(text)
    os.replace(tmp, path)


def load_task(source: TaskSource, workdir: Path) -> RealTask:
    """Load an lm-eval task (or each task of a group) under the name harness_real_<task>, on local files if given."""
    from lm_eval.defaults import DEFAULT_MAX_GEN_TOKS, default_gen_kwargs
    from lm_eval.tasks import TaskManager

    entry = find_entry(source.task, source.include_path)
    if lmeval_api.kind(entry) in ("group", "tag"):
        if source.data_files is not None:
            raise HarnessError(f"lm-eval group {source.task!r} reads each subtask's own dataset: drop data_files "
                               f"(stage them with `harness fetch`), or list a subtask with its files")
        from benchmarks.lmeval_groups import RealGroup, leaf_tasks
        leaves = [load_task(source.model_copy(update={"task": t}), workdir)
                  for t in dict.fromkeys(leaf_tasks(source.task, source.include_path))]
        return RealGroup(source, leaves)  # the same interface as RealTask
    if lmeval_api.kind(entry) != "task":
        raise HarnessError(f"lm-eval task {source.task!r} is a Python-class task, not supported yet; pick a YAML task")
    base = lmeval_api.load_yaml(entry.yaml_path)
    if base.get("output_type") not in ("generate_until", "multiple_choice"):
        raise HarnessError(f"lm-eval task {source.task!r} has output_type {base.get('output_type')!r}; "
                           f"only generate_until and multiple_choice tasks are supported")
    preflight(entry.yaml_path, source.task)  # before lm-eval imports the task's modules

    name = f"harness_real_{source.task}"
    # lm-eval merges an include shallowly (harness.lmeval_api.load_yaml: `merged.update(cfg)`),
    # so every overridden mapping is written whole.
    override: dict[str, Any] = {"include": str(Path(entry.yaml_path).resolve()), "task": name, "num_fewshot": source.num_fewshot}
    if base["output_type"] == "generate_until":
        gen = dict(base.get("generation_kwargs") or default_gen_kwargs(base.get("fewshot_delimiter", "\n\n")))
        # Written explicitly so that every lm-eval backend (HFLM, vLLM) and the harness's rollouts use one
        # budget; 256 is lm-eval's own default when the YAML has none (gsm8k).
        gen["max_gen_toks"] = source.max_gen_toks or gen.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS
        override["generation_kwargs"] = gen
    if source.data_files is not None:
        override.update(_data_overrides(source, base, workdir))
    (folder := Path(workdir) / "lmeval_tasks" / name).mkdir(parents=True, exist_ok=True)
    stage_yaml(folder / f"{name}.yaml", yaml.safe_dump(override, sort_keys=False))
    try:
        with quiet_datasets():
            task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    except ModuleNotFoundError as e:  # a dependency preflight does not know about
        raise HarnessError(f"lm-eval task {source.task!r} needs the missing package {e.name!r}; pip install it") from e
    except (ConnectionError, FileNotFoundError) as e:  # offline with no cached copy of the hub dataset
        raise HarnessError(f"lm-eval task {source.task!r} could not read its dataset "
                           f"({type(e).__name__}); pass data_files with local copies of its splits") from e
    except Exception as e:  # datasets' DatasetGenerationError & co: a local file that is not what it claims
        if source.data_files is None or not type(e).__module__.startswith(("datasets", "pyarrow", "json")):
            raise
        raise HarnessError(f"data_files of {source.task!r} ({', '.join(sorted(map(str, source.data_files.values())))})"
                           f" could not be read as one dataset ({type(e).__name__}: {first_line(root_cause(e))}); give "
                           f"JSON lines (or parquet) with the same fields in every split") from None
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
    from benchmarks.lmeval_checks import check_data_files
    check_data_files(source.task, base, files)  # first rows against the task's fields, before datasets reads them
    return {"dataset_path": kinds.pop(), "dataset_name": None,
            # The arrow cache goes beside the YAML: never into the user's ~/.cache for local files.
            "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()},
                               "cache_dir": str(Path(workdir).resolve() / "datasets_cache")}}




def _pick(kind: str, chosen: str | None, valid: list[str], task: str) -> str:
    if chosen is None:
        return valid[0]
    if chosen not in valid:
        raise unknown(kind, chosen, valid, fix=f"(of task {task!r})")
    return chosen
