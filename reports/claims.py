"""The seeds' published claims, tested on one sweep's runs: drop at matched gain across seeds, predictors, the dial.

The procedure (DESIGN.md, "Matched gain and verdicts"); selections read validation, reported numbers read eval:

1. g = FRACTION × the smallest best *validation* gain among the seeds of the anchor methods (SFT, GRPO,
   on-policy SFT), so it is fixed before any eval number is looked at.
2. Per run, the first crossing of g by its validation gain along the evaluation trajectory (step 0 = the base,
   gain 0), interpolated linearly between the two checkpoints around it; every other quantity (validation
   drop, eval gain, eval drop and its interval) is read at the same fractional step.
3. Per (arm, seed), among its learning rates whose runs cross g, the one with the lowest validation drop at
   the crossing (ties: earliest crossing, then lowest rate); its *eval* drop at that point is the (arm, seed)
   value. Every arm has the same candidates (the sweep's learning-rate grid), and since the value is read on
   a split the choice never saw, picking the best of K candidates does not bias it (no winner's curse).
4. An arm's estimate: mean over seeds with `reports.stats.seed_interval`. A seed that never crosses g makes
   every comparison of its arm "not tested", never a silent drop-out; so does having fewer than MIN_SEEDS.
5. "A forgets more than B": one-sided Welch t-test on the seed values at α = 0.05 (`reports.stats.greater`),
   calibrated by tests/test_calibration.py. "Comparable gain": a Welch non-inferiority test on each seed's
   eval gain at the learning rate with the best final validation gain, margin COMPARABLE_GAIN points.
6. A predictor "predicts forgetting" when, over every run's final checkpoint, r > 0 with one-sided p < 0.05
   and R² ≥ R2_PREDICTS; a significant relation of the opposite sign is "not reproduced".

The seeds' claims are data (`CLAIMS`): which arms, which tests, which source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports import stats as S
from reports.claim_specs import CLAIMS, ClaimSpec  # noqa: F401 (claims as data; re-exported)
from reports.frame import Frames, final_checkpoints, trained_checkpoints

ANCHORS = ("sft", "grpo", "onpolicy_sft")
FRACTION = 0.5
R2_PREDICTS = 0.5       # "predicts forgetting": explains at least half of the drop's variance across runs
COMPARABLE_GAIN = 5.0   # points: "comparable gain" = non-inferior to SFT's by at most this margin
MIN_SEEDS = 3           # a comparison on fewer seeds per arm is not tested
VAL_GAIN, VAL_DROP = "val/target_gain", "val/nontarget_drop"
READ_AT_CROSSING = ("target_gain", "nontarget_drop", "nontarget_drop_lo", "nontarget_drop_hi", "kl_to_base",
                    "pld_drift", "pld_rise")


def matched_level(ckpts: pd.DataFrame, anchors=ANCHORS, fraction: float = FRACTION) -> float:
    """g: `fraction` of the smallest per-seed best validation gain among the anchor methods present (NaN if none)."""
    ck = trained_checkpoints(ckpts)
    ck = ck[ck["method"].isin(anchors)]
    if ck.empty:
        return float("nan")
    return fraction * float(ck.groupby(["method", "seed"])[VAL_GAIN].max().min())


def never_gained(ckpts: pd.DataFrame, anchors=ANCHORS) -> str:
    """Why g does not exist: the anchor seeds whose best validation gain at any lr and checkpoint is ≤ 0."""
    ck = trained_checkpoints(ckpts)
    best = ck[ck["method"].isin(anchors)].groupby(["method", "seed"])[VAL_GAIN].max()
    return ", ".join(f"{m} seed {int(sd)} (best {v:+.1f})" for (m, sd), v in best[best <= 0].items())


def crossing(steps: np.ndarray, val_gain: np.ndarray, columns: dict[str, np.ndarray], g: float) -> dict | None:
    """Where a trajectory's validation gain first reaches g (linear between checkpoints), and `columns` there.

    Arrays are in step order and start at the base (step 0). None if the trajectory never reaches g.
    """
    hit = np.flatnonzero(val_gain >= g)
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        w, j = 1.0, 0
    else:
        j = i - 1
        w = float((g - val_gain[j]) / (val_gain[i] - val_gain[j]))
    out = {"step": (1 - w) * steps[j] + w * steps[i]}
    for k, v in columns.items():
        out[k] = float((1 - w) * v[j] + w * v[i])
    return out


def drop_at_gain(ckpts: pd.DataFrame, g: float, by: str = "arm") -> pd.DataFrame:
    """Per (`by`, seed): the module docstring's steps 2–3; `crossed` False (values NaN) when no run reached g."""
    ck = ckpts.sort_values([by, "seed", "run_id", "step"], kind="stable")
    n = len(ck)
    col = {k: (ck[k].to_numpy(dtype=float) if k in ck.columns else np.full(n, np.nan))
           for k in ("step", "lr", VAL_GAIN, VAL_DROP, *READ_AT_CROSSING)}
    base = col["step"] == 0
    for k in ("nontarget_drop_lo", "nontarget_drop_hi"):  # the base row has no interval: it *is* the base, drop 0
        col[k] = np.where(np.isnan(col[k]) & base, col["nontarget_drop"], col[k])
    read = {k: col[k] for k in (VAL_DROP, *READ_AT_CROSSING)}
    run_ids = ck["run_id"].to_numpy()
    keys = list(zip(ck[by].to_numpy(), ck["seed"].to_numpy()))
    starts = np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])
    groups: dict[tuple, list] = {}
    for lo, hi in zip(starts, np.r_[starts[1:], n]):
        cands = groups.setdefault(keys[lo], [])
        c = crossing(col["step"][lo:hi], col[VAL_GAIN][lo:hi], {k: v[lo:hi] for k, v in read.items()}, g) \
            if np.isfinite(g) else None
        cands.append(None if c is None else {**c, "lr": col["lr"][lo], "run_id": run_ids[lo]})
    rows = []
    for (key, seed), cands in groups.items():
        hit = [c for c in cands if c is not None]
        row = {by: key, "seed": seed, "crossed": bool(hit), "runs": len(cands), "runs_crossed": len(hit)}
        if hit:
            row.update(min(hit, key=lambda c: (c[VAL_DROP], c["step"], c["lr"])))
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Estimate:
    """An arm's value over its seeds: mean and 95% interval (reports.stats.seed_interval), and what is missing."""

    mean: float
    lo: float
    hi: float
    values: list[float] = field(default_factory=list)
    seeds: int = 0          # seeds the arm ran
    missing: int = 0        # seeds that never reached g
    peak: str = ""          # the evidence when seeds never reached g: the arm's highest validation gain anywhere

    @property
    def ok(self) -> bool:
        return bool(self.values) and self.missing == 0 and len(self.values) >= MIN_SEEDS

    def why_not(self, arm: str) -> str:
        if self.missing:
            return f"{arm}: {self.missing} of {self.seeds} seeds never reached g on validation" + \
                (f" ({self.peak})" if self.peak else "")
        return f"{arm}: {len(self.values)} seed(s); a comparison needs ≥ {MIN_SEEDS}"

    def text(self) -> str:
        if not self.values:
            return "never reached g"
        tail = f", {self.missing} seed(s) never reached g" if self.missing else ""
        return f"{self.mean:.1f} [{self.lo:.1f}, {self.hi:.1f}] (n={len(self.values)}{tail})"


def estimate(values, halves=None, seeds: int | None = None, missing: int = 0) -> Estimate:
    """An Estimate from per-seed values and their own interval half-widths."""
    mean, lo, hi = S.seed_interval(values, halves)
    return Estimate(mean, lo, hi, [float(v) for v in values], len(values) + missing if seeds is None else seeds,
                    missing)


def arm_drop(per_seed: pd.DataFrame, arm: str, by: str = "arm") -> Estimate:
    """An arm's drop-at-matched-gain estimate from `drop_at_gain`'s rows."""
    sub = per_seed[per_seed[by] == arm]
    hit = sub[sub["crossed"]] if "crossed" in sub else sub.iloc[:0]
    halves = ((hit["nontarget_drop_hi"] - hit["nontarget_drop_lo"]) / 2).tolist() if len(hit) else []
    return estimate(hit["nontarget_drop"].tolist() if len(hit) else [], halves, len(sub), len(sub) - len(hit))


def best_gain(ckpts: pd.DataFrame, arm: str, by: str = "arm") -> Estimate:
    """Per seed, the final eval gain of the learning rate with the best final validation gain; over seeds."""
    fin = final_checkpoints(trained_checkpoints(ckpts))
    fin = fin[fin[by] == arm].sort_values([VAL_GAIN, "lr"], ascending=[False, True], kind="stable")
    per_seed = fin.groupby("seed", sort=False).head(1)
    halves = ((per_seed.get("target_gain_hi", np.nan) - per_seed.get("target_gain_lo", np.nan)) / 2).tolist()
    return estimate(per_seed["target_gain"].tolist(), halves)


def peak_gain(ckpts: pd.DataFrame, arm: str, seeds: set) -> str:
    """The evidence why seeds of an arm never reach g: their highest validation gain at any checkpoint and lr."""
    sub = trained_checkpoints(ckpts)
    sub = sub[(sub["arm"] == arm) & sub["seed"].isin(seeds) & sub[VAL_GAIN].notna()]
    if not len(sub):
        return ""
    top = sub.loc[sub[VAL_GAIN].idxmax()]
    return (f"their highest validation gain at any lr and checkpoint is {top[VAL_GAIN]:+.1f} (lr {top['lr']:.1e}, "
            f"seed {int(top['seed'])}, step {int(top['step'])})")


@dataclass
class Claim:
    source: str
    statement: str
    result: str
    verdict: str


def predictor_test(fin: pd.DataFrame, key: str) -> tuple[str, str]:
    """(result sentence, verdict) of "`key` predicts the final drop", pooled over runs, with within-method r."""
    fit = S.correlation(fin[key], fin["nontarget_drop"]) if key in fin else S.correlation([], [])
    if not np.isfinite(fit["r"]):
        return f"{key}: fewer than 3 runs with a value", "not tested"
    within = []
    for m, sub in fin.groupby("method", sort=True):
        r = S.correlation(sub[key], sub["nontarget_drop"])["r"]
        if np.isfinite(r):
            within.append(f"{m} {r:+.2f}")
    res = (f"final {key} vs drop over {fit['n']:.0f} runs: r = {fit['r']:+.2f}, R² = {fit['r2']:.2f}, one-sided "
           f"p = {fit['p_pos']:.2g} (criterion r > 0, p < {S.ALPHA}, R² ≥ {R2_PREDICTS}); within-method r: "
           + (", ".join(within) or "–"))
    if fit["r"] > 0 and fit["p_pos"] < S.ALPHA and fit["r2"] >= R2_PREDICTS:
        return res, "reproduced"
    if fit["p_neg"] < S.ALPHA:
        return res + "; the relation has the opposite sign", "not reproduced"
    return res, "not reproduced"


def evaluate_claim(spec: ClaimSpec, g: float, drop: dict[str, Estimate], gain: dict[str, Estimate],
                   fin: pd.DataFrame, why_no_g: str = "") -> Claim:
    """Run a ClaimSpec's tests; every test must pass for "reproduced"."""
    if spec.predictor is not None:
        res, verdict = predictor_test(fin, spec.predictor)
        return Claim(spec.source, spec.statement, res, verdict)
    absent = [a for a in spec.arms if a not in drop]
    if absent:
        return Claim(spec.source, spec.statement, f"{', '.join(absent)} not in this sweep", "not tested")
    if not np.isfinite(g):
        why = f" ({why_no_g})" if why_no_g else ""
        return Claim(spec.source, spec.statement, "no positive matched gain: some seed of an anchor method never "
                     f"gained on validation{why}", "not tested")
    shown = "; ".join(f"{a} {drop[a].text()}" for a in spec.arms)
    lacking = [drop[a].why_not(a) for a in spec.arms if not drop[a].ok]
    if lacking:
        return Claim(spec.source, spec.statement, f"drop at g = {g:.1f}: {shown}; " + "; ".join(lacking),
                     "not tested")
    parts, ok = [], True
    for a, b in spec.gain_noninferior:
        t = S.noninferior(gain[a].values, gain[b].values, COMPARABLE_GAIN)
        ok &= t.significant
        verdict = "comparable" if t.significant else "not shown comparable"
        parts.append(f"gain {b} {gain[b].text()} vs {a} {gain[a].text()}: {verdict} ({t.text})")
    for a, b in spec.more:
        t = S.greater(drop[a].values, drop[b].values)
        ok &= t.significant
        parts.append(f"{a} > {b}: {'yes' if t.significant else 'no'} ({t.text})")
    for a, b in spec.not_more:
        t = S.greater(drop[a].values, drop[b].values)
        ok &= not t.significant
        parts.append(f"{a} > {b}: {'yes (the claim needs no)' if t.significant else 'no'} ({t.text})")
    return Claim(spec.source, spec.statement, f"drop at g = {g:.1f}: {shown}; " + "; ".join(parts),
                 "reproduced" if ok else "not reproduced")


def claims(fr: Frames) -> tuple[float, list[Claim]]:
    """(g, one Claim per entry of CLAIMS, then one per sweep variant of a claim's subject) from the sweep's arms.

    g and the predictor fits use the method arms only; a variant arm (e.g. TMS at another teacher learning
    rate) is tested in its method's place, so a verdict's sensitivity to that setting is shown beside it.
    """
    ck = fr.ckpts
    g = matched_level(ck)
    if np.isfinite(g) and g <= 0:  # some anchor seed never gained: no positive gain that all of them reach
        g = float("nan")
    every = fr.all_ckpts if fr.all_ckpts is not None else ck
    per_seed = drop_at_gain(every, g)
    have = sorted(set(every["arm"]))
    drop = {m: arm_drop(per_seed, m) for m in have}
    for m in have:
        if drop[m].missing:
            rows = per_seed[(per_seed["arm"] == m) & ~per_seed["crossed"].astype(bool)]
            drop[m].peak = peak_gain(every, m, set(rows["seed"]))
    gain = {m: best_gain(every, m) for m in have}
    fin = final_checkpoints(trained_checkpoints(ck))
    out = []
    why = never_gained(ck) if not np.isfinite(g) else ""
    for spec in CLAIMS:
        out.append(evaluate_claim(spec, g, drop, gain, fin, why))
        variants = sorted(set(every.loc[(every["method"] == spec.subject) & (every["arm"] != spec.subject), "arm"]))
        out += [evaluate_claim(spec.for_variant(v), g, drop, gain, fin, why) for v in variants]
    return g, out


def claims_frame(fr: Frames) -> tuple[float, pd.DataFrame]:
    """`claims` as a table (source, claim, result, verdict)."""
    g, rows = claims(fr)
    return g, pd.DataFrame([{"source": c.source, "claim": c.statement, "result": c.result, "verdict": c.verdict}
                            for c in rows], columns=["source", "claim", "result", "verdict"])
