"""Seed-level statistics shared by every figure, table and claim: one interval rule, one test per question.

* `seed_interval`: mean over seeds ± hypot(t₀.₉₇₅,ₙ₋₁ · sd/√n, mean per-seed half-width). The first term is the
  seed-to-seed spread (Student t, not 1.96: with 3–5 seeds the normal quantile is far too narrow); the second is
  the evaluation prompts' sampling error, which the seeds share (they are scored on the same prompts) and so
  does not shrink with n. A seed whose checkpoint had no flipped example carries the exact zero-flip bound,
  never a zero-width interval.
* `greater`: one-sided Welch t-test on seed values, "A's mean is above B's". Calibrated by
  tests/test_calibration.py (simulated equal arms hold α; simulated differences are found).
* `noninferior`: one-sided Welch test that B's mean is no more than `margin` below A's.
* `correlation`: Pearson r, R², least-squares line and one-sided p-values for a positive and a negative slope.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


def seed_interval(values, halves=None, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, lo, hi) over seeds by the module's one interval rule; NaNs when there are no values."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    h = np.nan_to_num(np.asarray(halves if halves is not None else np.zeros(len(v)), dtype=float))
    spread = stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    half = float(np.hypot(spread, h.mean() if len(h) else 0.0))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


@dataclass
class Test:
    """One hypothesis test's outcome: whether it rejected at `ALPHA`, its p-value, and a sentence."""

    significant: bool
    p: float
    text: str


def _welch(a, b, shift: float = 0.0) -> tuple[float, float]:
    """(t, one-sided p) of H1: mean(a) − mean(b) > shift, by Welch's unequal-variance t-test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a.mean() - b.mean() - shift
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:  # both arms constant over seeds: the sign of the difference is all there is
        return float(np.sign(diff) * np.inf) if diff else 0.0, (0.0 if diff > 0 else 1.0)
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0))
    t = diff / se
    return float(t), float(stats.t.sf(t, df))


def greater(a, b, alpha: float = ALPHA) -> Test:
    """One-sided Welch test that the mean of seed values `a` exceeds that of `b` (each needs ≥ 2 seeds)."""
    t, p = _welch(a, b)
    return Test(p < alpha, p, f"Welch t = {t:+.2f}, one-sided p = {p:.3g}")


def noninferior(a, b, margin: float, alpha: float = ALPHA) -> Test:
    """One-sided Welch test that mean(b) > mean(a) − margin: B is not worse than A by `margin` or more."""
    t, p = _welch(b, a, -margin)
    return Test(p < alpha, p, f"non-inferiority margin {margin:g}: Welch t = {t:+.2f}, p = {p:.3g}")


def correlation(x, y) -> dict[str, float]:
    """`reports.pareto.linear_fit` (r, R², slope, intercept, n) plus one-sided p-values p_pos (r > 0), p_neg (r < 0)."""
    from reports.pareto import linear_fit

    fit = linear_fit(x, y)
    r, n = fit["r"], fit["n"]
    if not np.isfinite(r):
        return {**fit, "p_pos": float("nan"), "p_neg": float("nan")}
    t = r * np.sqrt((n - 2) / max(1e-300, 1 - r * r))
    return {**fit, "p_pos": float(stats.t.sf(t, n - 2)), "p_neg": float(stats.t.cdf(t, n - 2))}
