"""One spelling per setting on the command line: each command's flags can also be written `key=value`.

`harness run --world micro` and `harness run world=micro` mean the same, as do `harness sweep --world micro`
and `harness sweep world=micro`; the sweep's name is `--experiment`/`experiment=` wherever an MLflow
experiment is meant (run, sweep, report, ui), with `name` accepted as its other spelling.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from harness.errors import HarnessError


def as_str(v: Any) -> str:
    """A string setting (YAML may have read `name=1` as a number)."""
    if isinstance(v, (list, dict)):
        raise ValueError("takes one value")
    return str(v)


def as_int(v: Any) -> int:
    """An integer setting."""
    if isinstance(v, bool) or isinstance(v, float) and not v.is_integer():
        raise ValueError("takes an integer")
    try:
        return int(v)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"takes an integer, got {v!r}") from None


def as_bool(v: Any) -> bool:
    """A switch: true/false, yes/no, 1/0."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("takes true or false")


def as_count(v: Any) -> int:
    """A count of at least 1 (workers, trials)."""
    n = as_int(v)
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


def as_port(v: Any) -> int:
    """A TCP port, 1..65535."""
    n = as_int(v)
    if not 1 <= n <= 65535:
        raise ValueError(f"must be between 1 and 65535, got {n}")
    return n


def as_list(v: Any) -> list[str]:
    """A list setting: `a,b`, `[a, b]` or a single `a`; never empty, no name twice."""
    items = v if isinstance(v, list) else str(v).split(",")
    out = [str(x).strip() for x in items if str(x).strip()]
    if not out:
        raise ValueError("is empty; give at least one value, e.g. a,b")
    twice = sorted({x for x in out if out.count(x) > 1})
    if twice:
        raise ValueError(f"lists {twice[0]!r} twice; give each once")
    return out


def as_int_list(v: Any) -> list[int]:
    """A list of integers ≥ 0 (seeds): `0,1,2`, `[0, 1, 2]` or `0`."""
    out = [as_int(yaml.safe_load(x)) for x in as_list(v)]
    if any(n < 0 for n in out):
        raise ValueError(f"takes integers >= 0, got {min(out)}")
    return out


def as_methods(v: Any) -> str | list[str]:
    """`all` or a list of method (or sweep variant) names."""
    return "all" if v == "all" or v == ["all"] else as_list(v)


@dataclass(frozen=True)
class Setting:
    """A command setting spelled `--<flag>` or `<key>=value` for any of `keys`."""

    dest: str
    keys: tuple[str, ...]
    convert: Callable[[Any], Any]

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def take_settings(args: argparse.Namespace, settings: list[Setting], tokens: list[str],
                  strict: bool = False) -> list[str]:
    """Put every `key=value` token that spells one of `settings` onto `args`, converted; returns the others.

    A flag (default None when not given) and a token, or two tokens, that disagree are an error; with
    `strict`, so is any other token."""
    by_key = {k: s for s in settings for k in s.keys}
    given: dict[str, str] = {}  # dest -> how the user spelled it
    for s in settings:
        value = getattr(args, s.dest, None)
        if value is not None:
            setattr(args, s.dest, _convert(s, value, f"{s.flag} {value}"))
            given[s.dest] = f"{s.flag} {value}"
    rest = []
    for tok in tokens:
        key, sep, raw = tok.partition("=")
        s = by_key.get(key) if sep else None
        if s is None:
            if strict:
                raise HarnessError(f"unknown setting {tok!r}; this command takes {spellings(settings)} "
                                   "(as key=value or --flag)")
            rest.append(tok)
            continue
        value = _convert(s, _scalar(raw), tok)
        if s.dest in given and getattr(args, s.dest) != value:
            raise HarnessError(f"`{given[s.dest]}` and `{tok}` disagree; give the setting once")
        setattr(args, s.dest, value)
        given.setdefault(s.dest, tok)
    return rest


def _convert(s: Setting, value: Any, spelled: str) -> Any:
    try:
        return s.convert(value)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"`{spelled}`: {s.keys[0]} {e}") from None


def add_settings(parser: argparse.ArgumentParser, settings: list[Setting], helps: dict[str, str],
                 metavars: dict[str, str] | None = None) -> None:
    """Add one flag per setting (all defaulting to None, so a later key=value can be told apart)."""
    metavars = metavars or {}
    for s in settings:
        aliases = [f"--{k.replace('_', '-')}" for k in s.keys if f"--{k.replace('_', '-')}" != s.flag]
        if s.convert is as_bool:
            parser.add_argument(s.flag, *aliases, dest=s.dest, action="store_const", const=True, default=None,
                                help=helps[s.dest])
        else:
            parser.add_argument(s.flag, *aliases, dest=s.dest, default=None, help=helps[s.dest],
                                metavar=metavars.get(s.dest, s.dest.upper()))


def spellings(settings: list[Setting]) -> str:
    """The key=value keys of `settings`, for help texts and error messages."""
    return ", ".join(k for s in settings for k in s.keys)
