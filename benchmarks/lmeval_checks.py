"""What can go wrong loading an lm-eval task, checked or translated where the harness calls the library.

Local data files are read against the task's template fields before datasets builds them (a file in another schema
is named in one line, not a `DatasetGenerationError` or jinja's `'question' is undefined` deep inside); optional
packages and nltk data are checked by reading the task's modules, not importing them; datasets' and the YAML loader's
errors are said in one line naming the file. A real world's first docs are rendered and scored on loading, and a
method that needs rewards is refused on a target that cannot score sampled text.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

from harness import lmeval_api
from harness.errors import HarnessError

# Optional packages that lm-eval task modules import at load time, and the lm-eval extra that installs them.
_OPTIONAL_DEPS = {"langdetect": "ifeval", "immutabledict": "ifeval", "math_verify": "math",
                  "sympy": "math", "antlr4": "math"}

_TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice")
_OPTIONAL = re.compile(r"\b([A-Za-z_]\w*)\s+is\s+(?:not\s+)?(?:un)?defined\b")


def task_fields(base: dict) -> set[str]:
    """Top-level doc fields the task's Jinja templates read (a `!function` or a literal reads none we can see)."""
    import jinja2
    from jinja2 import meta

    env, out = jinja2.Environment(), set()
    if base.get("process_docs"):  # the templates read the processed docs' fields, not the file's
        return out
    for key in _TEMPLATE_KEYS:
        tpl = base.get(key)
        if not isinstance(tpl, str) or "{{" not in tpl and "{%" not in tpl:
            continue
        try:
            found = meta.find_undeclared_variables(env.parse(tpl))
        except jinja2.TemplateSyntaxError:  # lm-eval reports its own template errors when it renders
            continue
        out |= found - set(_OPTIONAL.findall(tpl))  # `x is undefined`: a field the template does without
    return out


def first_row_fields(path: Path) -> set[str]:
    """Field names of a data file's first row (JSON lines / JSON array / parquet); HarnessError if unreadable."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            return set(pq.read_schema(path).names)
        except Exception as e:  # pyarrow.ArrowInvalid and kin: not a parquet file
            raise HarnessError(f"data file {str(path)!r} is not a readable parquet file ({type(e).__name__}); "
                               f"write it with pandas/pyarrow, or give JSON lines") from None
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(1 << 16)
    text = head.lstrip()
    if not text:
        raise HarnessError(f"data file {str(path)!r} is empty; give one JSON object per line")
    if text.startswith("["):  # a JSON array: read it whole (such files are small; datasets would read it whole too)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise HarnessError(f"data file {str(path)!r} is not valid JSON ({e}); give one JSON object per "
                               f"line") from None
        first = rows[0] if rows else {}
    else:
        line = text.splitlines()[0]
        try:
            first = json.loads(line)
        except json.JSONDecodeError as e:
            raise HarnessError(f"data file {str(path)!r} line 1 is not a JSON object ({e}); give one JSON object "
                               f"per line") from None
    if not isinstance(first, dict):
        raise HarnessError(f"data file {str(path)!r}: its first row is {type(first).__name__}, not a JSON object "
                           f"of fields; give one object per line")
    return set(first)


def check_data_files(task: str, base: dict, files: dict[str, Path]) -> None:
    """Each split's file has the fields the task's templates read, and every split has the same fields."""
    need = task_fields(base)
    fields = {split: first_row_fields(p) for split, p in files.items()}
    for split, have in fields.items():
        lacking = sorted(need - have)
        if lacking:
            raise HarnessError(f"data file {str(files[split])!r} ({task} {split}) lacks field(s) "
                               f"{', '.join(lacking)} that lm-eval task {task!r} reads (its rows have "
                               f"{', '.join(sorted(have)) or 'none'}); give it in the task's hub schema")
    if len({frozenset(v) for v in fields.values()}) > 1:
        common = set.intersection(*fields.values())
        split = max(fields, key=lambda s: len(fields[s] - common) + len(common ^ fields[s]))
        odd = sorted(fields[split] ^ common) or sorted(fields[split])
        raise HarnessError(f"data file {str(files[split])!r} ({task} {split}) has other fields than the task's other "
                           f"splits (differs in {', '.join(odd)}); give every split in one schema")


@contextlib.contextmanager
def quiet_datasets():
    """datasets without its progress bars and error logs on stderr: the harness says what failed, in one line."""
    import datasets
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    # lm-eval's advice on `--metadata` for a task whose dataset is a function (two lines per task built) names a
    # flag of its own CLI that a harness user has no use for.
    task_log = logging.getLogger("lm_eval.api.task")
    task_log.addFilter(_no_metadata_advice)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        task_log.removeFilter(_no_metadata_advice)


def _no_metadata_advice(record: logging.LogRecord) -> bool:
    return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines)."""
    return (str(e).strip().splitlines() or [""])[0][:200]


def root_cause(e: BaseException) -> BaseException:
    """The innermost cause: datasets wraps the real problem (a bad row, a schema clash) in a generic error."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def broken_yaml(path: Path, name: str, e: Exception) -> HarnessError:
    """A task YAML of include_path that does not parse, named with the parser's own position."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    why = getattr(e, "problem", None) or first_line(e)
    return HarnessError(f"task YAML {str(path)!r} in include_path cannot be read{at} ({why}), so task {name!r} "
                        f"cannot be loaded from it; fix the file")


def preflight(yaml_path: Path, task: str) -> None:
    """Check the optional imports and nltk data of the task's modules by reading them, not importing them."""
    folders, path = [], Path(yaml_path)
    while True:  # the task's folder and those of the YAMLs it includes
        folders.append(path.parent)
        inc = lmeval_api.load_yaml(path, recursive=False).get("include")
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


def read_train_file(path: str) -> list[dict]:
    """The rows of `world.target.train_file` (JSON lines or parquet), datasets' errors said in one line."""
    if not Path(path).expanduser().exists():
        raise HarnessError(f"world.target.train_file {path!r} does not exist; give a local JSONL/parquet file")
    import datasets
    fmt = "parquet" if path.endswith(".parquet") else "json"
    try:
        with quiet_datasets():
            return list(datasets.load_dataset(fmt, data_files={"train": str(Path(path).expanduser())})["train"])
    except Exception as e:  # DatasetGenerationError & co, from deep inside datasets
        raise HarnessError(f"world.target.train_file {path!r} cannot be read as {fmt} ({type(root_cause(e)).__name__}"
                           f": {first_line(root_cause(e))}); give JSON lines (or parquet) in the task's schema") from None


def check_first_docs(world) -> None:
    """Each task's first eval doc and the target's first training doc of a RealWorld rendered and scored as a run
    will, so a template or data problem is one line on loading, not an error deep inside a run."""
    for leaf in (leaf for rt in world.real.values() for leaf in getattr(rt, "leaves", [rt])):  # a group: each
        c, docs = leaf.task.config, leaf.task.eval_docs
        if len(docs):
            leaf.check_doc(docs[0], leaf.data_file(c.test_split or c.validation_split))
    docs, rt, path = world._train_docs, world.real[world.target], world.cfg.target.train_file
    if docs and not hasattr(rt, "leaves"):  # a group has no one task to render them with
        rt.check_doc(docs[0], f"world.target.train_file {path!r}" if path else
                     rt.data_file(rt.task.config.training_split))


def check_rewarded(world, method: str) -> None:
    """Refuse a method that trains on the verifier's reward when a RealWorld's target cannot score sampled text."""
    from harness.method import get_method
    kind = world.real[world.target].output_type
    if get_method(method).rewarded and kind != "generate_until":
        raise HarnessError(f"world.target {world.target!r} is a {kind} task (lm-eval scores it by log-likelihood), "
                           f"so {method} would get no reward from sampled text; pick a generate_until target "
                           f"(gsm8k, ifeval) or a label-trained method (sft, idft, tms)")


def check_context(world) -> None:
    """A RealWorld's longest prompt + generation budget within the model's positions, for every task (`--dry-run`);
    names the knob that sets it."""
    limit = json.loads((Path(world.base_path()) / "config.json").read_text()).get("max_position_embeddings")
    if not limit:
        return
    tok = world.tokenizer

    def longest(items) -> int:
        return max((len(tok(it.prompt, add_special_tokens=False)["input_ids"]) for it in items), default=0)

    # Rollouts sample up to world.max_new_tokens, else the target's max_gen_toks (RealWorld.max_new_tokens).
    knob = "world.max_new_tokens" if world.cfg.max_new_tokens else "world.target.max_gen_toks"
    n = longest(world.train_items + world.heldout_items)
    if n + world.max_new_tokens > limit:
        raise HarnessError(f"a {world.target!r} training prompt of {n} tokens plus {knob}={world.max_new_tokens} "
                           f"exceeds the model's {limit} positions; lower {knob} or use a longer-context model")
    for i, src in enumerate([world.cfg.target, *world.cfg.retention]):
        budget = world.real[src.task].gen_kwargs.get("max_gen_toks") or 0
        n = max(longest(items[src.task]) for items in (world.val_items, world.eval_items))
        if world.real[src.task].output_type == "generate_until" and n + budget > limit:
            key = "world.target" if i == 0 else f"world.retention[{i - 1}]"
            raise HarnessError(f"a {src.task!r} eval prompt of {n} tokens plus its max_gen_toks={budget} exceeds the "
                               f"model's {limit} positions; lower {key}.max_gen_toks or use a longer-context model")
