"""Pure helpers on (gain, drop) points: the Pareto front, drop at matched gain, and a linear fit.

A point is better when its target gain is higher and its non-target drop lower.
Point i is on the front when no other point j is at least as good in both
(gain_j >= gain_i and drop_j <= drop_i) and strictly better in one. So
identical points (ties) are all on the front, a single point is its own front,
and a point with a NaN coordinate is never on it and never dominates another.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pareto_mask(gain: Sequence[float], drop: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points (maximise gain, minimise drop); NaN points are False."""
    g = np.asarray(gain, dtype=float)
    d = np.asarray(drop, dtype=float)
    if g.shape != d.shape or g.ndim != 1:
        raise ValueError(f"gain and drop must be 1-D of one length, got {g.shape} and {d.shape}")
    ok = np.isfinite(g) & np.isfinite(d)
    mask = np.zeros(len(g), dtype=bool)
    idx = np.flatnonzero(ok)
    # Sort by gain descending, then drop ascending: a point is dominated iff some earlier point
    # (gain >= its gain) has a lower drop, or an equal drop with a strictly higher gain.
    order = idx[np.lexsort((d[idx], -g[idx]))]
    best_drop = np.inf          # lowest drop among points with strictly higher gain seen so far
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and g[order[j]] == g[order[i]]:
            j += 1
        group = order[i:j]                      # equal gain, drop ascending
        lowest = d[group[0]]
        for k in group:
            # within the group only the lowest-drop points survive (ties kept); across groups drop must beat
            mask[k] = d[k] == lowest and d[k] < best_drop
        best_drop = min(best_drop, lowest)
        i = j
    return mask


def front_order(gain: Sequence[float], drop: Sequence[float]) -> np.ndarray:
    """Indices of the front's points sorted by gain ascending (for drawing it as a staircase)."""
    g = np.asarray(gain, dtype=float)
    idx = np.flatnonzero(pareto_mask(gain, drop))
    return idx[np.argsort(g[idx], kind="stable")]


def nice_step(span: float, max_ticks: int = 14) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that cuts `span` into at most `max_ticks` pieces."""
    if not np.isfinite(span) or span <= 0:
        return 1.0
    base = 10.0 ** np.floor(np.log10(span / max_ticks))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if span / (m * base) <= max_ticks:
            return m * base
    return 10.0 * base


def gain_grid(max_gain: float, max_ticks: int = 14) -> np.ndarray:
    """Positive gain thresholds on a round step up to `max_gain` (empty when nothing gained)."""
    if not np.isfinite(max_gain) or max_gain <= 0:
        return np.array([])
    step = nice_step(max_gain, max_ticks)
    return np.arange(1, int(np.floor(max_gain / step + 1e-9)) + 1) * step


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = slope*x + intercept with Pearson r, R² (= r² for one predictor) and n.

    NaN pairs are dropped; fewer than 3 points or a constant x/y give NaN statistics.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    nan = {"slope": np.nan, "intercept": np.nan, "r": np.nan, "r2": np.nan, "n": float(len(xa))}
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return nan
    xm, ym = xa - xa.mean(), ya - ya.mean()
    slope = float((xm * ym).sum() / (xm * xm).sum())
    intercept = float(ya.mean() - slope * xa.mean())
    r = float((xm * ym).sum() / np.sqrt((xm * xm).sum() * (ym * ym).sum()))
    resid = ya - (slope * xa + intercept)
    r2 = float(1.0 - (resid ** 2).sum() / (ym ** 2).sum())
    return {"slope": slope, "intercept": intercept, "r": r, "r2": r2, "n": float(len(xa))}
