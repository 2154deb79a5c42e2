"""User-facing errors: one line naming the problem and the fix; the CLI exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """A problem with the user's input (unknown name, malformed spec, missing path)."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops and ends FAILED."""


def unknown(kind: str, name: str, valid: Iterable[str], fix: str = "") -> HarnessError:
    """An 'unknown X' error with a did-you-mean suggestion and the valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    tail = f" {fix}" if fix else ""
    return HarnessError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.{tail}")
