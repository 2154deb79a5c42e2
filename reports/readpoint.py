"""The matched-gain read point on arrays, vectorised over any leading axes (worlds in the calibration suite).

Arrays are shaped [..., runs, checkpoints]: one (arm, seed)'s candidate runs (one per learning rate, sorted
by learning rate ascending) along `runs`, checkpoints in step order along the last axis, starting at the base
(step 0, gain 0, drop 0). Shorter runs are padded with NaN (a NaN never reaches g).

1. Per run, the first checkpoint position at which the validation gain reaches g (`first_crossing`: a
   fractional index, linear between the two checkpoints around it; NaN if never).
2. Per (arm, seed), the run with the lowest validation drop at that crossing (ties: earliest crossing step,
   then lowest learning rate), chosen on validation alone (`choose`).
3. On the chosen run, the first position at which the *eval* gain reaches g: the read point. Every reported
   quantity (eval drop and its interval, both gains, KL, PLD) is read there (`at`). Reading eval at its own
   crossing keeps what is compared matched where it is read: reading it at the validation crossing would carry
   the validation noise that made this learning rate look good (a run that crossed early by chance on
   validation) into the reported drop.
"""
from __future__ import annotations

import numpy as np

from harness import metric_names as N


def first_crossing(gain: np.ndarray, g) -> np.ndarray:
    """Fractional checkpoint index where `gain` [..., T] first reaches g (broadcast over leading axes); NaN if never."""
    gain = np.asarray(gain, dtype=float)
    g = np.asarray(g, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = gain >= g[..., None]
    any_hit = hit.any(axis=-1)
    i = np.argmax(hit, axis=-1)
    j = np.maximum(i - 1, 0)
    gi = np.take_along_axis(gain, i[..., None], -1)[..., 0]
    gj = np.take_along_axis(gain, j[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(i > 0, (g - gj) / np.where(gi > gj, gi - gj, 1.0), 0.0)
    return np.where(any_hit, j + np.where(i > 0, w, 0.0), np.nan)


def at(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """`values` [..., T] read at fractional index `pos` [...] (linear between checkpoints); NaN where pos is NaN."""
    values = np.asarray(values, dtype=float)
    pos = np.asarray(pos, dtype=float)
    ok = np.isfinite(pos)
    p = np.where(ok, pos, 0.0)
    j = np.floor(p).astype(int)
    k = np.minimum(j + 1, values.shape[-1] - 1)
    w = p - j
    vj = np.take_along_axis(values, j[..., None], -1)[..., 0]
    vk = np.take_along_axis(values, k[..., None], -1)[..., 0]
    out = np.where(w > 0, (1 - w) * vj + w * np.where(w > 0, vk, 0.0), vj)
    return np.where(ok, out, np.nan)


def choose(pos: np.ndarray, val_drop: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Index along `runs` of the chosen run per (arm, seed), from [..., runs, T] arrays; -1 if no run crossed."""
    d = at(val_drop, pos)
    s = at(steps, pos)
    crossed = np.isfinite(pos)
    d = np.where(crossed, d, np.inf)
    tie = crossed & (d == d.min(axis=-1, keepdims=True))
    s = np.where(tie, s, np.inf)
    tie &= s == s.min(axis=-1, keepdims=True)
    return np.where(crossed.any(axis=-1), np.argmax(tie, axis=-1), -1)


def read_point(steps, val_gain, val_drop, eval_gain, g, read: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Steps 1–3 of the module docstring on [..., runs, T] arrays: per (arm, seed) the chosen run index
    (`run`, -1 if none crossed on validation), its validation crossing step (`select_step`) and validation drop
    there (`select_val_drop`), the eval read point's step (`step`, NaN if the chosen run never reaches g on
    eval) and every array of `read` at that point."""
    steps = np.broadcast_to(np.asarray(steps, dtype=float), np.shape(val_gain))
    gg = np.asarray(g, dtype=float)
    pos = first_crossing(val_gain, gg[..., None] if gg.ndim else gg)
    run = choose(pos, val_drop, steps)
    pick = np.maximum(run, 0)[..., None, None]

    def chosen(a):
        a = np.broadcast_to(np.asarray(a, dtype=float), np.shape(val_gain))
        return np.take_along_axis(a, np.broadcast_to(pick, (*a.shape[:-2], 1, a.shape[-1])), -2)[..., 0, :]

    sel = np.take_along_axis(pos, np.maximum(run, 0)[..., None], -1)[..., 0]
    sel = np.where(run >= 0, sel, np.nan)
    epos = first_crossing(chosen(eval_gain), gg)
    epos = np.where(run >= 0, epos, np.nan)
    out = {"run": run, "select_step": at(chosen(steps), sel), "select_val_drop": at(chosen(val_drop), sel),
           "step": at(chosen(steps), epos)}
    out.update({k: at(chosen(v), epos) for k, v in read.items()})
    return out


def prompt_half(drop, drop_half, gain_half, g):
    """A drop read at g: the 95% prompt half-width of the drop itself, combined with the read point's shift
    under the eval gain's prompt error (slope of drop against gain taken as the chord from the base, drop / g)."""
    drop, gain_half = np.asarray(drop, dtype=float), np.nan_to_num(np.asarray(gain_half, dtype=float))
    g = np.asarray(g, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(np.isfinite(g) & (g > 0), drop / np.where(g > 0, g, 1.0), 0.0)
    return np.hypot(drop_half, slope * gain_half)


SAME_METRICS = (N.TARGET_GAIN, N.NONTARGET_DROP, N.VAL_TARGET_GAIN, N.VAL_NONTARGET_DROP, N.KL_TO_BASE, N.PLD_DRIFT)


def identical(ck, per_seed, a: str, b: str, by: str = "arm") -> bool:
    """Whether arms `a` and `b` ran the same learning rates and logged the same evaluation metrics at every
    checkpoint up to the later of their read points, in every seed (then any test between them compares a
    thing with itself). A seed not read (never reached g) is compared over its whole trajectory."""
    import pandas as pd

    cols = [c for c in SAME_METRICS if c in ck.columns]
    ra, rb = ck[ck[by] == a], ck[ck[by] == b]
    if set(ra["seed"]) != set(rb["seed"]) or not len(ra):
        return False
    for seed in sorted(set(ra["seed"])):
        reads = per_seed.loc[(per_seed[by].isin((a, b))) & (per_seed["seed"] == seed), "step"] \
            if "step" in per_seed else pd.Series(dtype=float)
        lim = float(reads.max()) if len(reads) and reads.notna().all() else np.inf
        sa = ra[ra["seed"] == seed].sort_values(["lr", "step"], kind="stable")
        sb = rb[rb["seed"] == seed].sort_values(["lr", "step"], kind="stable")
        steps = np.sort(sa["step"].unique())
        upto = steps[steps >= lim].min() if np.isfinite(lim) and (steps >= lim).any() else steps.max()
        sa, sb = sa[sa["step"] <= upto], sb[sb["step"] <= upto]
        where = [x[["lr", "step"]].to_numpy(float) for x in (sa, sb)]
        if len(sa) != len(sb) or not np.array_equal(*where):
            return False
        if not np.allclose(sa[cols].to_numpy(float), sb[cols].to_numpy(float), rtol=0, atol=1e-9, equal_nan=True):
            return False
    return True
