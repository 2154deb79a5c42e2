"""TRAPO's adaptive guidance: how long an expert prefix each micro-group gets, and where that prefix is cut
(methods/trapo.py samples the continuations and holds the loss)."""
from __future__ import annotations

from typing import Callable

# Micro-groups: (rollouts, guidance ratio, cumulative-success threshold): guided iff successes so far < threshold.
MICRO_GROUPS = ((4, 0.0, 0), (2, 0.25, 2), (1, 0.5, 4), (1, 1.0, 7))


def guidance(stage: int, successes: int) -> float:
    """Expert-prefix ratio of micro-group `stage` (0-based) given the cumulative successes before it."""
    _, rho, threshold = MICRO_GROUPS[stage]
    return rho if successes < threshold else 0.0


def prefix_end(label_ids: list[int], rho: float, is_break: Callable[[int], bool]) -> int:
    """Expert tokens in a ρ-prefix: past the first break after ⌊ρL⌋ if it lies before (ρ+0.3)L, else ⌊ρL⌋."""
    L = len(label_ids)
    if rho >= 1:
        return L
    threshold = int(L * rho)
    idx = next((i for i, t in enumerate(label_ids) if i > threshold and is_break(t)), None)
    return idx + 1 if idx is not None and idx < L * (rho + 0.3) else threshold
