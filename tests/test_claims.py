"""The claims arithmetic against hand-computed values: matched gain level, per-seed choice, seed CIs, tests, dial."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports.claims import (Estimate, at_matched_gain, claims, dial, dial_verdict, estimate, forgets_more,
                            matched_level, p_greater)
from reports.frame import Frames


def ck(rows):
    """Checkpoint rows (method, seed, lr, step, gain, drop[, style]) -> the frame layout reports use."""
    df = pd.DataFrame(rows, columns=["method", "seed", "lr", "step", "target_gain", "nontarget_drop", "teacher_style"])
    df["arm"] = df["method"]
    df["nontarget_drop_lo"] = df["nontarget_drop"] - 1.0
    df["nontarget_drop_hi"] = df["nontarget_drop"] + 1.0
    df["run_id"] = df["method"] + df["seed"].astype(str) + df["lr"].astype(str) + df["teacher_style"]
    return df


ROWS = [
    # sft: seed 0 best gain 60, seed 1 best gain 50; at g = 20 the lowest drop is 30 (s0) and 40 (s1)
    ("sft", 0, 1e-3, 0, 0, 0, "worked"), ("sft", 0, 1e-3, 25, 20, 30, "worked"), ("sft", 0, 1e-3, 50, 60, 45, "worked"),
    ("sft", 0, 1e-4, 25, 10, 2, "worked"),
    ("sft", 1, 1e-3, 25, 25, 40, "worked"), ("sft", 1, 1e-3, 50, 50, 50, "worked"),
    # grpo: best gains 68 and 40 -> the smallest anchor best gain is 40, g = 20
    ("grpo", 0, 1e-4, 25, 68, 0.5, "worked"), ("grpo", 1, 1e-4, 25, 40, 1.5, "worked"),
    ("onpolicy_sft", 0, 1e-4, 25, 68, 0.0, "worked"), ("onpolicy_sft", 1, 1e-4, 25, 68, 1.0, "worked"),
    # idft never reaches 20
    ("idft", 0, 1e-3, 25, 5, 0.0, "worked"), ("idft", 1, 1e-3, 25, 7, 0.0, "worked"),
]


def test_matched_level_is_half_the_smallest_seed_best_gain_of_the_anchors():
    assert matched_level(ck(ROWS)) == pytest.approx(20.0)   # min(60, 50, 68, 40, 68, 68) / 2; idft ignored


def test_at_matched_gain_picks_the_lowest_drop_reaching_g_over_all_lrs_and_steps():
    per = at_matched_gain(ck(ROWS), 20.0).set_index(["arm", "seed"])
    assert per.loc[("sft", 0), "nontarget_drop"] == 30 and per.loc[("sft", 0), "step"] == 25
    assert per.loc[("sft", 1), "nontarget_drop"] == 40
    assert per.loc[("grpo", 1), "nontarget_drop"] == 1.5
    assert math.isnan(per.loc[("idft", 0), "nontarget_drop"]) and per.loc[("idft", 1), "best_gain"] == 7


def test_estimate_by_hand():
    e = estimate([10.0, 20.0, 30.0], [1.0, 1.0, 1.0])
    half = math.hypot(4.302652729911275 * 10.0 / math.sqrt(3), 1.0)   # t(0.975, 2) * sd / sqrt(n), bootstrap 1
    assert e.mean == pytest.approx(20.0) and e.lo == pytest.approx(20 - half) and e.hi == pytest.approx(20 + half)
    one = estimate([5.0], [2.0])
    assert (one.lo, one.hi) == pytest.approx((3.0, 7.0))                 # one seed: its own bootstrap interval
    assert math.isnan(estimate([], [], missing=2).mean)


def test_forgets_more_by_interval_then_by_bootstrap():
    # three seeds each: [28.3, 33.7] vs [-1.1, 2.1] by hand (t(0.975, 2) = 4.30) -> decided by the intervals
    assert forgets_more(estimate([30.0, 31.0, 32.0], [1.0] * 3), estimate([0.0, 0.5, 1.0], [1.0] * 3)) == \
        (True, "95% intervals do not overlap")
    # two seeds: t(0.975, 1) = 12.7 makes the intervals overlap, so the hierarchical bootstrap decides
    hi, lo = estimate([30.0, 40.0], [1.0, 1.0]), estimate([0.5, 1.5], [1.0, 1.0])
    assert hi.lo < lo.hi
    assert forgets_more(hi, lo) == (True, "intervals overlap; bootstrap p = 0.000")
    same = estimate([1.0, 2.0], [1.0, 1.0])
    ok, how = forgets_more(same, same)
    assert not ok and 0.3 < float(how.rsplit("= ", 1)[1]) < 0.7
    assert p_greater(lo, hi) > 0.99 and p_greater(hi, lo) < 0.01
    assert forgets_more(Estimate(np.nan, np.nan, np.nan), lo) == (False, "not comparable (an arm never reached g)")


def test_claims_rows_and_verdicts():
    fr = Frames("x", runs=pd.DataFrame(), ckpts=ck(ROWS), parents=pd.DataFrame(), base=pd.DataFrame())
    fits = {"pld_drift": {"r": -0.8, "r2": 0.64, "n": 12}, "kl_to_base": {"r": 0.5, "r2": 0.25, "n": 12}}
    g, rows = claims(fr, fits)
    by = {r.statement.split(" ")[0] + r.source[:4]: r for r in rows}
    assert g == pytest.approx(20.0)
    rbd = rows[0]
    assert rbd.verdict == "reproduced" and "sft 35.0" in rbd.result          # mean of 30 and 40
    assert rows[1].verdict == "reproduced"                                     # sft vs onpolicy_sft
    idft = [r for r in rows if r.statement == "IDFT forgets less than SFT"][0]
    assert idft.verdict == "not reproduced" and "never reaches g" in idft.result
    assert by["PLDTMS "].verdict == "partly reproduced" and "opposite" in by["PLDTMS "].result   # r < 0
    assert by["KLRL's"].verdict == "not reproduced"                                              # R² 0.25


def test_dial_orders_styles_by_label_nll_and_judges_monotonicity():
    rows = ROWS + [("sft", 0, 1e-3, 25, 30, 5.0, "mild"), ("sft", 0, 1e-3, 25, 60, 0.5, "own")]
    ckpts = ck(rows)
    runs = ckpts.drop_duplicates("run_id")[["run_id", "method", "teacher_style"]].copy()
    runs["base/label_nll_seq"] = runs["teacher_style"].map({"worked": 150.0, "mild": 37.0, "own": 0.3})
    runs["base/label_nll_token"] = runs["base/label_nll_seq"] / 10
    fr = Frames("x", runs=runs, ckpts=ckpts, parents=pd.DataFrame(), base=pd.DataFrame())
    table = dial(fr, 20.0)
    assert table["teacher_style"].tolist() == ["own", "mild", "worked"]
    assert table["drop_at_g"].tolist() == pytest.approx([0.5, 5.0, 35.0])
    assert table["seeds"].tolist() == [1, 1, 2]
    assert dial_verdict(table).startswith("yes")
    flipped = table.assign(drop_at_g=[5.0, 0.5, 35.0])
    assert dial_verdict(flipped).startswith("no")
