"""Reuse of a run phase whose result does not depend on what a sweep varies (TMS's teacher at a fixed rate).

A sweep trains every seed at several learning rates; a phase that reads none of them (a teacher SFT run at its
own stated rate, and the samples harvested from it) computes the same thing for each. `reuse` stores the
phase's result under the world's cache folder, keyed by a digest of everything the caller says the phase reads
plus the source code of harness/, methods/ and benchmarks/, so an edited algorithm never reads an old result.
The cost the phase counted and the metrics it logged are stored with it and replayed, so a run that reuses a
phase logs the same numbers as one that computed it; only its seconds differ. Off under several ranks.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of every .py file of the packages a phase's result can depend on, and of torch's and
    transformers' versions (their kernels set the numbers)."""
    import torch
    import transformers
    h = hashlib.blake2b(f"{torch.__version__} {transformers.__version__}".encode(), digest_size=16)
    for pkg in ("harness", "methods", "benchmarks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def phase_key(parts: dict[str, Any]) -> str:
    """The digest of a phase's inputs (any picklable values) and of the code."""
    return hashlib.blake2b(pickle.dumps((source_digest(), sorted(parts.items())), protocol=4),
                           digest_size=16).hexdigest()


def reuse(ctx, name: str, parts: dict[str, Any], compute: Callable[[], T], enabled: bool = True) -> tuple[T, bool]:
    """(`compute()`'s result for these inputs, whether it was reused): read from the world's cache, else computed
    and stored.

    `parts` must name everything the phase reads that a run could change (seed, data, settings, base weights).
    """
    if not enabled or ctx.parallel.several:
        return compute(), False
    path = ctx.world.cache_dir / "phases" / f"{name}-{phase_key(parts)}.pkl"
    if path.exists():
        value, cost, logged = pickle.loads(path.read_bytes())
        for kind, n in cost.items():
            ctx.cost.add(kind, n)
        ctx.replay(logged)
        return value, True
    before = dict(ctx.cost.tokens)
    with ctx.recording() as logged:
        value = compute()
    cost = {k: v - before.get(k, 0) for k, v in ctx.cost.tokens.items() if v != before.get(k, 0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two workers may compute one key at once: last rename wins
    tmp.write_bytes(pickle.dumps((value, cost, logged), protocol=4))
    tmp.replace(path)
    return value, False
