"""One module per post-training method; `load_all()` imports (and thereby registers) every one.

Adding `methods/foo.py` with a `@register`-decorated Method subclass is enough
for the method to appear in `harness list`, `harness run` and sweeps.
"""
from __future__ import annotations

import importlib
import pkgutil

_SKIP = ("common",)


def load_all() -> None:
    """Import every method module of this package (private `_x` modules and shared ones excepted)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in _SKIP:
            importlib.import_module(f"{__name__}.{info.name}")
