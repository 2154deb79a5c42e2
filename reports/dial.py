"""The off-policy dial: SFT on the same prompts with labels in each teacher style, its drop at matched gain against
how surprising the labels are to the base, and the test of "forgetting grows with it".

Uses the claims' procedure (reports/claims.py) for g and for each style's drop at g.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from reports import stats as S
from reports.claims import MIN_SEEDS, arm_drop, best_gain, drop_at_gain
from reports.frame import Frames


def dial(fr: Frames, g: float, method: str = "sft") -> pd.DataFrame:
    """The off-policy dial: per teacher style, the base's NLL of its labels and `method`'s drop at g."""
    runs = fr.all_runs if fr.all_runs is not None else fr.runs
    ck = fr.all_ckpts if fr.all_ckpts is not None else fr.ckpts
    ck = ck[ck["method"] == method]
    if ck.empty or not np.isfinite(g):
        return pd.DataFrame()
    per_seed = drop_at_gain(ck, g, by="teacher_style")
    rows = []
    for style, sub in runs[runs["method"] == method].groupby("teacher_style"):
        e = arm_drop(per_seed, style, by="teacher_style")
        rows.append({"teacher_style": style, "label_nll_seq": sub.get("base/label_nll_seq", pd.Series(np.nan)).mean(),
                     "label_nll_token": sub.get("base/label_nll_token", pd.Series(np.nan)).mean(),
                     "seeds": e.seeds, "seeds_at_g": len(e.values), "drop_at_g": e.mean, "drop_lo": e.lo,
                     "drop_hi": e.hi, "best_gain": best_gain(ck, style, by="teacher_style").mean,
                     "values": e.values})
    return pd.DataFrame(rows).sort_values("label_nll_seq", kind="stable").reset_index(drop=True)


DIAL_CLAIM = "SFT's drop at matched gain grows with how off-policy its labels are (the base's NLL of them)"


def dial_verdict(table: pd.DataFrame) -> tuple[str, str]:
    """(sentence, verdict) of "the drop at g grows with the labels' NLL": regression of per-seed drops on it."""
    if table.empty:
        return "no teacher styles reached g", "not tested"
    short = table[(table["seeds_at_g"] < table["seeds"]) | (table["seeds_at_g"] < MIN_SEEDS)]
    if len(table) < 2 or len(short):
        why = ", ".join(f"{r.teacher_style}: {r.seeds_at_g} of {r.seeds} seeds reached g" for r in short.itertuples())
        return f"needs ≥ 2 styles with every seed (≥ {MIN_SEEDS}) at g ({why or 'one style'})", "not tested"
    x = np.concatenate([[r.label_nll_seq] * len(r.values) for r in table.itertuples()])
    y = np.concatenate([r.values for r in table.itertuples()])
    fit = S.correlation(np.log(x), y)
    ok = fit["r"] > 0 and fit["p_pos"] < S.ALPHA
    res = (f"per-seed SFT drop at g against log label NLL over {len(table)} styles × seeds (n = {fit['n']:.0f}): "
           f"slope {fit['slope']:+.1f} points per e-fold, r = {fit['r']:+.2f}, one-sided p = {fit['p_pos']:.2g}")
    return res, "reproduced" if ok else "not reproduced"
