"""What can go wrong loading an lm-eval task, checked or translated where the harness calls the library.

Local data files are read against the task's template fields before datasets builds them (a file in another schema
is named in one line, not a `DatasetGenerationError` or jinja's `'question' is undefined` deep inside); optional
packages and nltk data are checked by reading the task's modules, not importing them; datasets' and the YAML loader's
errors are said in one line naming the file.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
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
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


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
