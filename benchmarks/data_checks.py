"""Local data files read against an lm-eval task's fields before datasets builds them: a file in another schema is
named in one line here, instead of a `DatasetGenerationError` or jinja's `'question' is undefined` deep inside."""
from __future__ import annotations

import json
import re
from pathlib import Path

from harness.errors import HarnessError

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
