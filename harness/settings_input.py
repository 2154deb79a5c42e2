"""Settings as users write them: YAML files that must hold a mapping, `key=value` overrides, and their merge."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from harness.errors import HarnessError


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`, recursing into nested mappings."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml_mapping(path: str | Path, kind: str, hint: str = "") -> dict:
    """A YAML file that must hold a mapping; HarnessError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise HarnessError(f"{kind} {str(path)!r} does not exist{hint}")
    if not path.is_file():
        raise HarnessError(f"{kind} {str(path)!r} is a folder, not a YAML file{hint}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise HarnessError(f"{kind} {str(path)!r} is not a text file; give a YAML file{hint}") from None
    except yaml.YAMLError as e:
        raise HarnessError(f"{kind} {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise HarnessError(f"{kind} {str(path)!r} must be a mapping of fields")
    return loaded


def parse_overrides(items: list[str]) -> dict:
    """`a.b=c` strings -> nested dict; values are parsed as YAML scalars/lists (`1e-4`, `true`, `[0,1]`)."""
    out: dict = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise HarnessError(f"malformed override {item!r}; write key=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise HarnessError(f"cannot parse the value of {key!r} ({raw!r}): {e}") from None
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads `1e-4` as a string
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise HarnessError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
