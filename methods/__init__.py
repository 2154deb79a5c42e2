"""One module per post-training method; importing the package registers them all.

Adding `methods/foo.py` with a `@register`-decorated Method subclass is enough
for the method to appear in `harness list`, `harness run` and sweeps.
"""
from __future__ import annotations

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in ("base", "common"):
        importlib.import_module(f"{__name__}.{_info.name}")
