"""The off-policy dial: SFT on the same prompts with labels in each teacher style, its drop at matched gain against
how surprising the labels are to the base, and the test of "forgetting grows with it".

Uses the claims' procedure (reports/claims.py) for g and for each style's drop at g. The test's unit is the style,
the level at which the labels' NLL varies: each style's mean drop over its seeds (seed noise is inside that mean),
ranked against the style's log label NLL (Spearman), with the exact permutation p over all k! orderings of the
styles. That test is exact when the style means are exchangeable under the null; where the styles share one true
mean but their seeds scatter very differently (SFT on `own` varies by tenths of a point, on `worked` by tens), the
ordering of the means is not uniform and it rejected in up to 10% of simulated worlds. So "grows" also needs a
Welch test of the rank contrast Σ (rank of x − mean rank) · mean drop, whose variance is the styles' own seed
variances (valid in that case, anti-conservative when the style means themselves vary). Rejecting only when both
reject (an intersection–union test) keeps the level under either null. A per-seed regression would count k × seeds
points for k values of the NLL (pseudo-replication: in simulated worlds whose style means are unrelated to the NLL
it rejected in 17–35% of them, issue 25 and tests/test_dial.py). With k styles the
smallest attainable p is 1/k!, so at least MIN_STYLES = 4 (1/24 < 0.05) are needed; tests/test_dial.py calibrates
the level under a style-level null and shows the power on a monotone dose–response.
"""
from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pandas as pd
from scipy import stats

from harness import metric_names as N
from reports import stats as S
from reports.claim_specs import VERDICTS
from reports.claims import MIN_SEEDS, arm_drop, best_gain, drop_at_gain
from reports.frame import Frames

MIN_STYLES = 4            # 1/4! = 0.042 < α; with 3 styles no ordering can reach α (1/6)
EXACT_UP_TO = 8           # styles; above it the permutation p is estimated from MC_PERMUTATIONS random orderings
MC_PERMUTATIONS = 20_000
POWER_WORLDS = 2_000      # simulated worlds behind an "inconclusive" verdict's power figure
# Verdict labels: the claims table's four (reports/claim_specs.py).
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = VERDICTS


def dial(fr: Frames, g: float, method: str = "sft", lr: float | None = None) -> pd.DataFrame:
    """The off-policy dial: per teacher style, the base's NLL of its labels and `method`'s drop at g.

    lr: a declared rate reads every style's runs at that rate only; None reads them at the rate the recipe's dial
    arms share (`shared_rate`: the default spec trains its style arms at one stated rate, README "Budget"), or, where
    there is none, each style at its learning rate chosen on validation (the claims' rule).
    """
    runs = fr.all_runs if fr.all_runs is not None else fr.runs
    ck = fr.all_ckpts if fr.all_ckpts is not None else fr.ckpts
    ck = ck[ck["method"] == method]
    if lr is None:
        lr = shared_rate(runs[runs["method"] == method])
    if lr is not None:
        ck, runs = ck[np.isclose(ck["lr"], lr)], runs[np.isclose(runs["lr"], lr)]
    if ck.empty or not np.isfinite(g):
        return pd.DataFrame()
    per_seed = drop_at_gain(ck, g, by="teacher_style")
    rows = []
    for style, sub in runs[runs["method"] == method].groupby("teacher_style"):
        e = arm_drop(per_seed, style, by="teacher_style")
        rows.append({"teacher_style": style, "label_nll_seq": sub.get(N.BASE_LABEL_NLL_SEQ, pd.Series(np.nan)).mean(),
                     "label_nll_token": sub.get(N.BASE_LABEL_NLL_TOKEN, pd.Series(np.nan)).mean(),
                     "seeds": e.seeds, "seeds_at_g": len(e.values), "drop_at_g": e.mean, "drop_lo": e.lo,
                     "drop_hi": e.hi, "best_gain": best_gain(ck, style, by="teacher_style").mean,
                     "values": e.values})
    return pd.DataFrame(rows).sort_values("label_nll_seq", kind="stable").reset_index(drop=True)


def shared_rate(runs: pd.DataFrame) -> float | None:
    """The one learning rate every teacher style trained, when some style trained only that rate; else None."""
    if "teacher_style" not in runs or runs.empty:
        return None
    rates = {style: {float(f"{x:.6g}") for x in sub["lr"].astype(float)} for style, sub in runs.groupby("teacher_style")}
    if len(rates) < 2 or min(len(r) for r in rates.values()) != 1:
        return None
    common = set.intersection(*rates.values())
    return common.pop() if len(common) == 1 else None


DIAL_CLAIM = "SFT's drop at matched gain grows with how off-policy its labels are (the base's NLL of them)"


def _orderings(k: int, rng: np.random.Generator) -> np.ndarray:
    """Orderings of k styles the permutation p runs over: all k! (identity first), or the identity and random ones."""
    if k <= EXACT_UP_TO:
        return np.array(list(permutations(range(k))))
    return np.vstack([np.arange(k), np.argsort(rng.random((MC_PERMUTATIONS, k)), axis=1)])


def style_rank_test(x: np.ndarray, means: np.ndarray, alpha: float = S.ALPHA) -> dict[str, np.ndarray | float]:
    """Spearman ρ of style means against x and its exact permutation p-values, for one world or many at once.

    x: [k] the styles' dose (log label NLL); means: [k] or [W, k] style mean drops (W simulated worlds).
    Returns rho, p_pos (ρ this high or higher under a random assignment of the means to the styles), p_neg, and
    the verdict booleans `up`/`down` (p ≤ alpha, compared in counts of orderings so 6/120 counts as 0.05).
    Tied means get average ranks; if every mean is equal every ordering ties and both p are 1.
    """
    m = np.atleast_2d(np.asarray(means, dtype=float))
    k = m.shape[1]
    rx = stats.rankdata(np.asarray(x, dtype=float))
    rx = rx - rx.mean()
    rm = stats.rankdata(m, axis=1)
    rm = rm - rm.mean(axis=1, keepdims=True)
    perms = _orderings(k, np.random.default_rng(0))
    # Dot products of the centred ranks: ρ up to a per-world positive factor, so orderings compare the same.
    t = rm @ rx[perms].T                                                  # [W, orderings]; column 0 is the identity
    obs = t[:, :1]
    tol = 1e-9 * max(1.0, float(np.abs(rx).sum()) * k)
    n = t.shape[1]
    ge, le = (t >= obs - tol).sum(axis=1), (t <= obs + tol).sum(axis=1)
    norm = np.sqrt((rm ** 2).sum(axis=1) * (rx ** 2).sum())
    rho = np.divide(obs[:, 0], norm, out=np.zeros(len(m)), where=norm > 0)
    cut = math.floor(alpha * n + 1e-9)
    out = {"rho": rho, "p_pos": ge / n, "p_neg": le / n, "up": ge <= cut, "down": le <= cut, "orderings": n}
    if np.ndim(means) == 1:
        return {key: (v[0] if isinstance(v, np.ndarray) else v) for key, v in out.items()}
    return out


def rank_contrast_test(x: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray | float]:
    """Welch t-test of the contrast Σ c_i · mean_i, c = centred ranks of x, for one world ([k, n] seed values, or a
    list of k arrays) or many ([W, k, n]): one-sided p for a positive and a negative contrast.

    Its variance is Σ c_i² s_i²/n_i with Welch–Satterthwaite degrees of freedom; a zero variance with a nonzero
    contrast is p = 0 on its side, with a zero contrast p = 1 on both.
    """
    single = isinstance(seeds, (list, tuple)) or np.ndim(seeds) == 2
    if isinstance(seeds, (list, tuple)) and len({len(v) for v in seeds}) > 1:  # unequal seed counts: one world
        m = np.array([np.mean(v) for v in seeds])[None]
        n = np.array([len(v) for v in seeds], dtype=float)[None]
        v = np.array([np.var(v, ddof=1) for v in seeds])[None] / n
    else:
        a = np.asarray(seeds, dtype=float)
        a = a[None] if a.ndim == 2 else a
        n = np.full(a.shape[:2], a.shape[2], dtype=float)
        m, v = a.mean(-1), a.var(-1, ddof=1) / n
    c = stats.rankdata(np.asarray(x, dtype=float))
    c = c - c.mean()
    L, var = m @ c, (v * c ** 2).sum(1)
    parts = (v * c ** 2) ** 2 / (n - 1)
    df = np.divide(var ** 2, parts.sum(1), out=np.ones_like(var), where=parts.sum(1) > 0)
    sd = np.sqrt(var)
    t = np.divide(L, sd, out=np.where(L > 0, np.inf, np.where(L < 0, -np.inf, 0.0)), where=sd > 0)
    p_pos = np.where(t == 0, 1.0, stats.t.sf(t, np.maximum(df, 1.0)))
    p_neg = np.where(t == 0, 1.0, stats.t.cdf(t, np.maximum(df, 1.0)))
    out = {"contrast": L, "t": t, "df": df, "p_pos": p_pos, "p_neg": p_neg}
    return {key: val[0] for key, val in out.items()} if single else out


def dial_test(x: np.ndarray, seeds: np.ndarray, alpha: float = S.ALPHA) -> dict[str, np.ndarray | float]:
    """The dial's test on style-level data ([k, n] or [W, k, n] seed values): "up" when the style permutation test
    and the rank-contrast test both find a rise (p ≤ alpha), "down" when both find a fall; p is the larger one."""
    a = np.asarray(seeds, dtype=float) if not isinstance(seeds, (list, tuple)) else seeds
    means = a.mean(-1) if isinstance(a, np.ndarray) else np.array([np.mean(v) for v in a])
    r, c = style_rank_test(x, means, alpha), rank_contrast_test(x, a)
    return {"rho": r["rho"], "p_perm": r["p_pos"], "p_contrast": c["p_pos"], "orderings": r["orderings"],
            "p_pos": np.maximum(r["p_pos"], c["p_pos"]), "p_neg": np.maximum(r["p_neg"], c["p_neg"]),
            "up": r["up"] & (c["p_pos"] <= alpha), "down": r["down"] & (c["p_neg"] <= alpha)}


def trend_power(x: np.ndarray, means: np.ndarray, sds: np.ndarray, n: int, worlds: int = POWER_WORLDS,
                seed: int = 0) -> float:
    """Power of the dial's test for a monotone dose–response of the observed size: the observed means sorted into
    the order of x, each style's seed sd as noise on n seeds, the share of `worlds` simulated worlds that reject."""
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    mu = np.sort(np.asarray(means, dtype=float))[order]
    rng = np.random.default_rng(seed)
    sim = mu[None, :, None] + rng.standard_normal((worlds, len(mu), n)) * np.asarray(sds, dtype=float)[None, :, None]
    return float(dial_test(x, sim)["up"].mean())


def dial_verdict(table: pd.DataFrame, alpha: float = S.ALPHA) -> tuple[str, str]:
    """(sentence, verdict) of "the drop at g grows with the labels' NLL", tested with the style as the unit."""
    if table.empty:
        return "no teacher styles reached g", NOT_TESTED
    short = table[(table["seeds_at_g"] < table["seeds"]) | (table["seeds_at_g"] < MIN_SEEDS)]
    if len(short):
        why = ", ".join(f"{r.teacher_style}: {r.seeds_at_g} of {r.seeds} seeds reached g" for r in short.itertuples())
        return f"needs every seed (≥ {MIN_SEEDS}) of every style at g ({why})", NOT_TESTED
    k = len(table)
    if k < MIN_STYLES or not np.isfinite(table["label_nll_seq"]).all():
        return (f"needs ≥ {MIN_STYLES} teacher styles with a label NLL (has {k}): with k styles the smallest "
                f"permutation p is 1/k! ({1 / math.factorial(k):.2g})"), NOT_TESTED
    x = np.log(table["label_nll_seq"].to_numpy(dtype=float))
    values = [np.asarray(v, dtype=float) for v in table["values"]]
    means = np.array([v.mean() for v in values])
    r = dial_test(x, values, alpha)
    order = ", ".join(f"{s} {m:.1f}" for s, m in zip(table["teacher_style"], means))
    slope = np.polyfit(x, means, 1)[0]
    res = (f"style mean drop at g against log label NLL, {k} styles as the unit ({order}; ascending NLL): "
           f"Spearman ρ = {r['rho']:+.2f}, exact permutation p = {r['p_perm']:.3g} over {r['orderings']} "
           f"orderings (smallest attainable {1 / r['orderings']:.3g}), rank-contrast Welch p = "
           f"{r['p_contrast']:.2g}; least-squares slope of the style means {slope:+.1f} points per e-fold")
    if r["up"]:
        return res, REPRODUCED
    if r["down"]:
        return res + f"; the drop falls with the NLL (both tests, p = {r['p_neg']:.3g})", CONTRADICTED
    sds = np.array([v.std(ddof=1) for v in values])
    power = trend_power(x, means, sds, min(len(v) for v in values))
    return res + f"; power {power:.0%} for a monotone dose–response of the observed size", INCONCLUSIVE
