"""The seeds' published claims, tested on one sweep's runs: drop at matched gain across seeds, predictors, the dial.

The procedure (DESIGN.md, "Matched gain and verdicts"); selections read validation, reported numbers read eval:

1. g = FRACTION × the smallest best *validation* gain among the seeds of the anchor methods (SFT, GRPO,
   on-policy SFT), so it is fixed before any eval number is looked at.
2. Per run, the first crossing of g by its validation gain along the evaluation trajectory (step 0 = the base,
   gain 0), interpolated linearly between the two checkpoints around it.
3. Per (arm, seed), among its learning rates whose runs cross g, the one with the lowest validation drop at
   that crossing (ties: earliest crossing, then lowest rate): the choice sees validation only.
4. The read point: the chosen run's own first crossing of g by its *eval* gain (interpolated). The seed's value
   is the eval drop there; both gains (eval = g by construction, and validation) are reported there. Reading
   eval at the validation crossing would carry the validation luck that made this rate win into the value.
   A seed that never reaches g (on validation at any rate, or on eval at the chosen rate) makes every
   comparison of its arm "not tested", never a silent drop-out; so does having fewer than MIN_SEEDS.
5. An arm's estimate: mean over seeds with `reports.stats.interval` (seed spread + the prompt error the seeds
   share). Arms whose runs are identical up to the read point are "not tested" (`reports.readpoint.identical`).
6. "A forgets more than B": `reports.stats.directional` on the seed values, α = 0.05, calibrated by
   tests/test_calibration.py. "Comparable gain": the same test as non-inferiority (margin COMPARABLE_GAIN) on
   the final eval gain of the run chosen for the drop (same learning rate; at the read point itself the eval
   gains are g for every arm by construction). Verdicts and predictor tests: reports/verdicts.py.

The seeds' claims are data (`CLAIMS`): which arms, which tests, which source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import metric_names as N
from reports import readpoint as RP
from reports import stats as S
from reports.claim_specs import CLAIMS, COMPARABLE_GAIN, R2_PREDICTS, ClaimSpec  # noqa: F401 (re-exported)
from reports.frame import Frames, final_checkpoints, trained_checkpoints
from reports.verdicts import Claim, evaluate_claim, predictor_test  # noqa: F401 (re-exported)

ANCHORS = ("sft", "grpo", "onpolicy_sft")
FRACTION = 0.5
MIN_SEEDS = 3           # a comparison on fewer seeds per arm is not tested
VAL_GAIN, VAL_DROP = N.VAL_TARGET_GAIN, N.VAL_NONTARGET_DROP
READ_AT_CROSSING = (N.TARGET_GAIN, N.TARGET_GAIN_LO, N.TARGET_GAIN_HI, N.NONTARGET_DROP, N.NONTARGET_DROP_LO,
                    N.NONTARGET_DROP_HI, N.KL_TO_BASE, N.PLD_DRIFT, N.PLD_RISE)


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
    """Where one trajectory's gain first reaches g (linear between checkpoints), and `columns` there; None if never.

    Arrays are in step order and start at the base (step 0). `reports.readpoint` does the same on batches.
    """
    pos = RP.first_crossing(np.asarray(val_gain, dtype=float), g)
    if not np.isfinite(pos):
        return None
    return {"step": float(RP.at(np.asarray(steps, dtype=float), pos)),
            **{k: float(RP.at(np.asarray(v, dtype=float), pos)) for k, v in columns.items()}}


def _padded(sub: pd.DataFrame, cols: list[str]) -> tuple[dict[str, np.ndarray], list]:
    """One (arm, seed)'s runs as [runs, T] arrays (runs by learning rate, NaN-padded) and their run ids."""
    runs = [r for _, r in sorted(sub.groupby("run_id", sort=False), key=lambda kv: (kv[1]["lr"].iloc[0], kv[0]))]
    t = max(len(r) for r in runs)
    out = {k: np.full((len(runs), t), np.nan) for k in cols}
    for i, r in enumerate(runs):
        r = r.sort_values("step", kind="stable")
        for k in cols:
            out[k][i, :len(r)] = r[k].to_numpy(dtype=float) if k in r else np.nan
    return out, [(r["run_id"].iloc[0], float(r["lr"].iloc[0])) for r in runs]


def drop_at_gain(ckpts: pd.DataFrame, g: float, by: str = "arm") -> pd.DataFrame:
    """Per (`by`, seed): the module docstring's steps 2–3 (`reports.readpoint`); `crossed` False (values NaN)
    unless the chosen run reached g on validation *and* on eval. Also the chosen run's final eval gain."""
    ck = ckpts.copy()
    base = ck["step"] == 0
    for k in (N.NONTARGET_DROP_LO, N.NONTARGET_DROP_HI, N.TARGET_GAIN_LO, N.TARGET_GAIN_HI):
        # the base row has no interval: it *is* the base, gain and drop 0
        src = N.NONTARGET_DROP if k.startswith("nontarget") else N.TARGET_GAIN
        ck[k] = np.where(ck[k].isna() & base, ck[src], ck[k]) if k in ck else np.where(base, ck[src], np.nan)
    cols = ["step", VAL_GAIN, VAL_DROP, *READ_AT_CROSSING]
    gg = g if np.isfinite(g) else np.inf   # no g: nothing crosses
    rows = []
    for (key, seed), sub in ck.groupby([by, "seed"], sort=False, dropna=False):
        arr, ids = _padded(sub, cols)
        rp = RP.read_point(arr["step"], arr[VAL_GAIN], arr[VAL_DROP], arr[N.TARGET_GAIN], gg,
                           {k: arr[k] for k in (VAL_GAIN, VAL_DROP, *READ_AT_CROSSING)})
        run = int(rp.pop("run"))
        crossed_val = RP.first_crossing(arr[VAL_GAIN], gg)
        row = {by: key, "seed": seed, "runs": len(ids), "runs_crossed": int(np.isfinite(crossed_val).sum()),
               "crossed_val": run >= 0, "crossed": bool(run >= 0 and np.isfinite(rp["step"]))}
        if run >= 0:
            last = np.flatnonzero(np.isfinite(arr[N.TARGET_GAIN][run]))[-1]
            row.update({"run_id": ids[run][0], "lr": ids[run][1], **{k: float(v) for k, v in rp.items()},
                        "final_gain": arr[N.TARGET_GAIN][run, last],
                        "final_gain_half": (arr[N.TARGET_GAIN_HI][run, last] - arr[N.TARGET_GAIN_LO][run, last]) / 2})
        rows.append(row)
    out = pd.DataFrame(rows, columns=None if rows else [by, "seed", "runs", "runs_crossed", "crossed_val", "crossed"])
    if len(out) and N.NONTARGET_DROP_HI in out:
        drop_half = (out[N.NONTARGET_DROP_HI] - out[N.NONTARGET_DROP_LO]) / 2
        out["prompt_half"] = RP.prompt_half(out[N.NONTARGET_DROP], drop_half,
                                            (out[N.TARGET_GAIN_HI] - out[N.TARGET_GAIN_LO]) / 2, g)
    return out


@dataclass
class Estimate:
    """An arm's value over its seeds: mean and 95% interval (reports.stats.interval), and what is missing."""

    mean: float
    lo: float
    hi: float
    values: list[float] = field(default_factory=list)
    seeds: int = 0          # seeds the arm ran
    missing: int = 0        # seeds that never reached g (on validation, or on eval at the chosen learning rate)
    peak: str = ""          # the evidence when seeds never reached g: the arm's highest validation gain anywhere
    halves: list[float] = field(default_factory=list)   # per-seed prompt half-widths (95%) of the values
    eval_only: int = 0      # of `missing`: seeds whose chosen run reached g on validation but not on eval

    @property
    def ok(self) -> bool:
        return bool(self.values) and self.missing == 0 and len(self.values) >= MIN_SEEDS

    def why_not(self, arm: str) -> str:
        if self.missing:
            where = (f" ({self.eval_only} of them reached it on validation but not on eval at the chosen lr)"
                     if self.eval_only else "")
            return f"{arm}: {self.missing} of {self.seeds} seeds never reached g{where}" + \
                (f" ({self.peak})" if self.peak else "")
        return f"{arm}: {len(self.values)} seed(s); a comparison needs ≥ {MIN_SEEDS}"

    def text(self) -> str:
        if not self.values:
            return "never reached g"
        tail = f", {self.missing} seed(s) never reached g" if self.missing else ""
        return f"{self.mean:.1f} [{self.lo:.1f}, {self.hi:.1f}] (n={len(self.values)}{tail})"


def estimate(values, halves=None, seeds: int | None = None, missing: int = 0) -> Estimate:
    """An Estimate from per-seed values and their own prompt interval half-widths."""
    halves = list(halves) if halves is not None else [0.0] * len(values)
    mean, lo, hi = S.interval(values, halves)
    return Estimate(mean, lo, hi, [float(v) for v in values], len(values) + missing if seeds is None else seeds,
                    missing, halves=[float(h) for h in halves])


def arm_drop(per_seed: pd.DataFrame, arm: str, by: str = "arm", key: str = N.NONTARGET_DROP) -> Estimate:
    """An arm's drop-at-matched-gain estimate (or another `key` read there) from `drop_at_gain`'s rows."""
    sub = per_seed[per_seed[by] == arm]
    hit = sub[sub["crossed"].astype(bool)] if "crossed" in sub else sub.iloc[:0]
    if not len(hit):
        halves, vals = [], []
    elif key == N.NONTARGET_DROP:
        own = (hit[N.NONTARGET_DROP_HI] - hit[N.NONTARGET_DROP_LO]) / 2   # a frame without the read-point term
        halves, vals = hit["prompt_half"] if "prompt_half" in hit else own, hit[key]
    else:
        halves = hit["final_gain_half"] if key == "final_gain" else pd.Series(0.0, index=hit.index)
        vals = hit[key]
    e = estimate(list(vals), list(halves), len(sub), len(sub) - len(hit))
    if "crossed_val" in sub:
        e.eval_only = int((sub["crossed_val"].astype(bool) & ~sub["crossed"].astype(bool)).sum())
    return e


def best_gain(ckpts: pd.DataFrame, arm: str, by: str = "arm") -> Estimate:
    """Per seed, the final eval gain of the learning rate with the best final validation gain; over seeds."""
    fin = final_checkpoints(trained_checkpoints(ckpts))
    fin = fin[fin[by] == arm].sort_values([VAL_GAIN, "lr"], ascending=[False, True], kind="stable")
    per_seed = fin.groupby("seed", sort=False).head(1)
    halves = ((per_seed.get(N.TARGET_GAIN_HI, np.nan) - per_seed.get(N.TARGET_GAIN_LO, np.nan)) / 2).tolist()
    return estimate(per_seed[N.TARGET_GAIN].tolist(), halves)


def peak_gain(ckpts: pd.DataFrame, arm: str, seeds: set) -> str:
    """The evidence why seeds of an arm never reach g: their highest validation gain at any checkpoint and lr."""
    sub = trained_checkpoints(ckpts)
    sub = sub[(sub["arm"] == arm) & sub["seed"].isin(seeds) & sub[VAL_GAIN].notna()]
    if not len(sub):
        return ""
    top = sub.loc[sub[VAL_GAIN].idxmax()]
    return (f"their highest validation gain at any lr and checkpoint is {top[VAL_GAIN]:+.1f} (lr {top['lr']:.1e}, "
            f"seed {int(top['seed'])}, step {int(top['step'])})")


def identical_pairs(ck: pd.DataFrame, per_seed: pd.DataFrame, arms: list[str]) -> frozenset:
    """Pairs of `arms` whose runs are identical up to the read point (see `reports.readpoint.identical`)."""
    pairs = {frozenset(p) for spec in CLAIMS for p in spec.more + spec.not_more + spec.gain_noninferior}
    pairs |= {frozenset((a, v)) for spec in CLAIMS if spec.subject for v in arms
              for p in spec.more + spec.not_more + spec.gain_noninferior for a in p
              if v.startswith(f"{spec.subject}@")}
    return frozenset(p for p in pairs if len(p) == 2 and p <= set(arms) and RP.identical(ck, per_seed, *sorted(p)))


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
    # "comparable gain" at the drop's own learning rate: the chosen run's final eval gain
    gain = {m: arm_drop(per_seed, m, key="final_gain") for m in have}
    same = identical_pairs(every, per_seed, have) if np.isfinite(g) else frozenset()
    fin = final_checkpoints(trained_checkpoints(ck))
    out = []
    why = never_gained(ck) if not np.isfinite(g) else ""
    for spec in CLAIMS:
        out.append(evaluate_claim(spec, g, drop, gain, fin, why, same, per_seed))
        variants = sorted(set(every.loc[(every["method"] == spec.subject) & (every["arm"] != spec.subject), "arm"]))
        out += [evaluate_claim(spec.for_variant(v), g, drop, gain, fin, why, same, per_seed) for v in variants]
    return g, out


COLUMNS = ["source", "claim", "result", "verdict", "gains_at_read_point"]


def claims_frame(fr: Frames) -> tuple[float, pd.DataFrame]:
    """`claims` as a table (COLUMNS)."""
    g, rows = claims(fr)
    return g, pd.DataFrame([{"source": c.source, "claim": c.statement, "result": c.result, "verdict": c.verdict,
                             "gains_at_read_point": c.read_point} for c in rows], columns=COLUMNS)
