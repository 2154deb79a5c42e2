"""Seed-level statistics shared by every figure, table and claim: one variance, one interval rule, one test.

An arm's value is the mean over its seeds. Its variance has two parts (`arm_moments`):

* the seeds' spread, s²/n (sample variance over seeds), which also holds the part of the prompts' sampling
  error that differs from seed to seed;
* the prompt term v: the evaluation prompts' sampling error, which the seeds *share* (they are scored on the
  same prompts, so an arm that tends to forget particular prompts is off by the same amount in every seed and
  that error does not shrink with n). v is the mean over seeds of (half-width / z₀.₉₇₅)², the variance of the
  paired bootstrap interval each checkpoint logs. Per-prompt results are logged only for a run's final
  checkpoint (eval/examples.csv), not at the read point, so the shared part cannot be split from the per-seed
  part; v is its upper bound (exact when every seed flips the same prompts), which keeps the tests at or below
  their level rather than above it.

`interval`: mean ± t_df · √(s²/n + v), df by Welch–Satterthwaite with v treated as known (df = ∞ when the
seeds agree exactly). `compare` tests a difference of two arms with the same variance (both terms of both
arms), so the intervals, the figures and the verdicts rest on one rule. A zero total variance (no spread and no
prompt interval logged) is a degenerate case: `compare` returns `se = 0` and the caller says "not tested";
there is never a t of ±∞.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
Z975 = float(stats.norm.ppf(0.975))   # the logged intervals are 95% percentile-bootstrap intervals


def arm_moments(values, halves=None, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, seed term s²/n, prompt term v, n) over `axis` (seeds); NaN values are left out, arrays broadcast."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, v, 0.0).sum(axis=axis) / n
        dev = np.where(ok, v - np.expand_dims(mean, axis), 0.0)
        seed = np.where(n > 1, (dev ** 2).sum(axis=axis) / np.maximum(n - 1, 1) / n, 0.0)
        h = np.zeros_like(v) if halves is None else np.nan_to_num(np.asarray(halves, dtype=float))
        prompt = np.where(n > 0, (np.where(ok, h / Z975, 0.0) ** 2).sum(axis=axis) / n, np.nan)
    return mean, seed, prompt, n


def _df(seed_terms: list, ns: list, known=0.0) -> np.ndarray:
    """Welch–Satterthwaite df of a sum of seed terms (s²/n) plus `known` prompt terms; ∞ where no seed term."""
    total = sum(np.asarray(t, dtype=float) for t in seed_terms) + known
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = sum(np.where(np.asarray(n) > 1, np.asarray(t, dtype=float) ** 2 / np.maximum(np.asarray(n) - 1, 1), 0.0)
                    for t, n in zip(seed_terms, ns))
        return np.where(denom > 0, total ** 2 / np.where(denom > 0, denom, 1.0), np.inf)


def _quantile(df, alpha: float) -> np.ndarray:
    return np.where(np.isfinite(df), stats.t.ppf(1 - alpha / 2, np.where(np.isfinite(df), df, 1.0)), Z975)


def interval(values, halves=None, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, lo, hi) over seeds by the module's one rule; NaNs when there are no values."""
    mean, seed, prompt, n = arm_moments(values, halves)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    half = float(_quantile(_df([seed], [n], prompt), alpha) * np.sqrt(seed + prompt))
    return float(mean), float(mean - half), float(mean + half)


seed_interval = interval   # the name the figures and frame.aggregate_seeds use


@dataclass
class Comparison:
    """mean(a) − mean(b) − shift with its standard error, df and one-sided p-values (arrays over worlds)."""

    diff: np.ndarray
    se: np.ndarray
    df: np.ndarray
    p_greater: np.ndarray   # H1: diff > 0
    p_less: np.ndarray      # H1: diff < 0

    def power(self, effect: float, alpha: float = ALPHA) -> np.ndarray:
        """Probability that this one-sided test (H1: diff > 0) rejects when the true difference is `effect`."""
        df = np.where(np.isfinite(self.df), self.df, 1e6)
        crit = stats.t.ppf(1 - alpha, df)
        with np.errstate(invalid="ignore", divide="ignore"):
            return stats.nct.sf(crit, df, effect / self.se)


def compare(a, b, halves_a=None, halves_b=None, shift: float = 0.0, axis: int = -1) -> Comparison:
    """Welch-type test of mean(a) − mean(b) against `shift`, with both arms' seed and prompt terms (vectorised)."""
    ma, sa, pa, na = arm_moments(a, halves_a, axis)
    mb, sb, pb, nb = arm_moments(b, halves_b, axis)
    diff = ma - mb - shift
    se = np.sqrt(sa + pa + sb + pb)
    df = _df([sa, sb], [na, nb], pa + pb)
    dfq = np.where(np.isfinite(df), df, 1e6)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.nan)
    return Comparison(diff, se, df, stats.t.sf(t, dfq), stats.t.cdf(t, dfq))


@dataclass
class Test:
    """One directional test's outcome: `sign` +1 significant as claimed, −1 significant the other way, 0 neither;
    None when it could not be run (`text` says why)."""

    sign: int | None
    p: float
    text: str
    power: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.sign == 1


def directional(a, b, halves_a=None, halves_b=None, shift: float = 0.0, effect: float = 5.0,
                alpha: float = ALPHA, what: str = "difference") -> Test:
    """Is mean(a) − mean(b) > shift (sign +1), < shift (sign −1), or neither; with power for `effect` above shift."""
    c = compare(a, b, halves_a, halves_b, shift)
    diff, se, df = float(c.diff), float(c.se), float(c.df)
    if not se > 0:
        return Test(None, float("nan"), f"{what}: zero variance (every seed equal, no prompt interval logged); "
                                        "no test is possible")
    pg, pl = float(c.p_greater), float(c.p_less)
    sign = 1 if pg < alpha else -1 if pl < alpha else 0
    power = float(c.power(effect, alpha))
    dft = "∞" if not np.isfinite(df) else f"{df:.1f}" if df < 1000 else "> 1000"   # the prompt term dominates
    return Test(sign, pg, f"{what} {diff + shift:+.1f} ± {se:.1f} (s.e., seeds + prompts), t = {diff / se:+.2f}, "
                          f"df = {dft}, one-sided p = {pg:.2g}", power)


def correlation(x, y) -> dict[str, float]:
    """`reports.pareto.linear_fit` (r, R², slope, intercept, n) plus one-sided p-values p_pos (r > 0), p_neg (r < 0).

    These p-values assume independent points; for runs clustered by method use `clustered_correlation`.
    """
    from reports.pareto import linear_fit

    fit = linear_fit(x, y)
    r, n = fit["r"], fit["n"]
    if not np.isfinite(r):
        return {**fit, "p_pos": float("nan"), "p_neg": float("nan")}
    t = r * np.sqrt((n - 2) / max(1e-300, 1 - r * r))
    return {**fit, "p_pos": float(stats.t.sf(t, n - 2)), "p_neg": float(stats.t.cdf(t, n - 2))}


MIN_CLUSTERS = 4


def clustered_correlation(x, y, cluster) -> dict[str, float]:
    """Pooled fit of y on x (r, R², slope over every point) with p-values at the cluster level.

    Runs of one method share its data and recipe, so they are not independent: the p-values come from the
    correlation of the clusters' means (one point per method, df = clusters − 2), valid when methods are the
    unit of replication. NaN p-values with fewer than MIN_CLUSTERS clusters (no honest p exists then).
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ca = np.asarray(cluster)
    ok = np.isfinite(xa) & np.isfinite(ya)
    fit = correlation(xa[ok], ya[ok])
    keys = list(dict.fromkeys(ca[ok]))
    mx = np.array([xa[ok][ca[ok] == k].mean() for k in keys])
    my = np.array([ya[ok][ca[ok] == k].mean() for k in keys])
    between = correlation(mx, my) if len(keys) >= MIN_CLUSTERS else {"r": float("nan"), "p_pos": float("nan"),
                                                                       "p_neg": float("nan")}
    return {**fit, "clusters": float(len(keys)), "r_clusters": between["r"], "p_pos": between["p_pos"],
            "p_neg": between["p_neg"]}
