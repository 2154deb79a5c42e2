"""The claims procedure against hand-computed values: g from validation, crossings, per-seed choice, tests, verdicts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports import stats as S
from reports.claims import (CLAIMS, MIN_SEEDS, arm_drop, best_gain, claims, crossing, drop_at_gain, estimate,
                            matched_level, predictor_test)
from reports.dial import dial, dial_verdict
from reports.frame import Frames


def traj(method, seed, lr, points, style="worked", arm=None):
    """Rows of one run: step 0 (the base) then (step, val gain, val drop, eval gain, eval drop) points."""
    rows = [(0, 0.0, 0.0, 0.0, 0.0)] + list(points)
    df = pd.DataFrame(rows, columns=["step", "val/target_gain", "val/nontarget_drop", "target_gain", "nontarget_drop"])
    df["method"], df["arm"], df["seed"], df["lr"], df["teacher_style"] = method, arm or method, seed, lr, style
    df["run_id"] = f"{arm or method}-{style}-s{seed}-{lr}"
    df["nontarget_drop_lo"] = np.where(df["step"] > 0, df["nontarget_drop"] - 1.0, np.nan)  # the base logs no CI
    df["nontarget_drop_hi"] = np.where(df["step"] > 0, df["nontarget_drop"] + 1.0, np.nan)
    df["target_gain_lo"], df["target_gain_hi"] = df["target_gain"] - 2.0, df["target_gain"] + 2.0
    for k in ("kl_to_base", "pld_drift", "pld_rise"):
        df[k] = df["step"] / 50.0
    return df


def frames(parts):
    ck = pd.concat(parts, ignore_index=True)
    runs = ck.groupby("run_id").tail(1)
    return Frames("t", runs, ck, pd.DataFrame(), pd.DataFrame(), runs, ck)


def test_crossing_interpolates_every_column_at_the_same_fraction():
    out = crossing(np.array([0, 25, 50.]), np.array([0, 20, 60.]), {"d": np.array([0, 10, 30.])}, 30.0)
    assert out == pytest.approx({"step": 31.25, "d": 15.0})        # w = (30-20)/(60-20) = 0.25
    assert crossing(np.array([0, 25.]), np.array([0, 10.]), {}, 30.0) is None


def test_drop_at_gain_selects_on_validation_and_reads_eval():
    a = traj("sft", 0, 1e-3, [(25, 40, 20, 38, 22), (50, 60, 30, 62, 33)])
    b = traj("sft", 0, 1e-4, [(25, 10, 2, 12, 3), (50, 30, 4, 28, 6)])
    row = drop_at_gain(pd.concat([a, b]), 20.0).iloc[0]
    # 1e-3 crosses at step 12.5 with val drop 10; 1e-4 at step 37.5 with val drop 3 -> 1e-4 is chosen
    assert row["lr"] == 1e-4 and row["step"] == pytest.approx(37.5)
    assert row["val/nontarget_drop"] == pytest.approx(3.0)
    assert row["nontarget_drop"] == pytest.approx(4.5) and row["target_gain"] == pytest.approx(20.0)
    assert (row["nontarget_drop_lo"], row["nontarget_drop_hi"]) == pytest.approx((3.5, 5.5))
    assert row["runs"] == 2 and row["runs_crossed"] == 2
    # crossing before the first checkpoint interpolates from the base, whose interval is its own value 0
    first = drop_at_gain(a, 20.0).iloc[0]
    assert first["nontarget_drop"] == pytest.approx(11.0) and first["nontarget_drop_lo"] == pytest.approx(10.5)


def test_matched_level_reads_validation_of_the_anchors_only():
    parts = [traj("sft", 0, 1e-3, [(25, 40, 20, 99, 1)]), traj("grpo", 0, 1e-4, [(25, 30, 0, 99, 0)]),
             traj("idft", 0, 1e-4, [(25, 2, 0, 99, 0)])]
    assert matched_level(pd.concat(parts)) == pytest.approx(15.0)   # min(40, 30) / 2; eval gains ignored


def test_seed_interval_and_estimate_by_hand():
    mean, lo, hi = S.seed_interval([10.0, 20.0, 30.0], [1.0, 1.0, 1.0])
    half = math.hypot(4.302652729911275 * 10.0 / math.sqrt(3), 1.0)   # t(0.975, 2) * sd / sqrt(n), prompts 1
    assert (mean, lo, hi) == pytest.approx((20.0, 20 - half, 20 + half))
    assert S.seed_interval([5.0], [2.0]) == pytest.approx((5.0, 3.0, 7.0))
    e = estimate([], [], seeds=2, missing=2)
    assert math.isnan(e.mean) and not e.ok and "2 of 2 seeds never reached g" in e.why_not("x")
    assert not estimate([1.0] * (MIN_SEEDS - 1)).ok and estimate([1.0] * MIN_SEEDS).ok


def test_welch_tests_agree_with_scipy():
    a, b = [30.0, 31.0, 32.0], [0.0, 0.5, 1.0]
    t = S.greater(a, b)
    assert t.significant and t.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert not S.greater(b, a).significant
    sft, grpo = [60.0, 62.0, 64.0], [58.0, 59.0, 61.0]
    ni = S.noninferior(sft, grpo, 5.0)
    ref = sps.ttest_ind(np.add(grpo, 5.0), sft, equal_var=False, alternative="greater").pvalue
    assert ni.p == pytest.approx(ref)
    assert S.greater([1.0] * 3, [0.0] * 3).p == 0.0 and S.greater([0.0] * 3, [0.0] * 3).p == 1.0


def test_correlation_p_values_agree_with_scipy():
    x, y = [1, 2, 3, 4, 5], [1, 3, 2, 5, 4]
    c = S.correlation(x, y)
    assert c["r"] == pytest.approx(0.8) and c["r2"] == pytest.approx(0.64)
    assert c["p_pos"] == pytest.approx(sps.pearsonr(x, y, alternative="greater").pvalue)
    assert c["p_neg"] == pytest.approx(sps.pearsonr(x, y, alternative="less").pvalue)


def _world(sft_drops, other_drops, other="grpo", gains=(60.0, 60.0), seeds=3, other_never=False):
    parts = []
    for s in range(seeds):
        parts.append(traj("sft", s, 1e-3, [(50, 60, sft_drops[s], gains[0], sft_drops[s])]))
        top = 10 if other_never and s == 0 else 60
        parts.append(traj(other, s, 1e-4, [(50, top, other_drops[s], gains[1], other_drops[s])]))
        parts.append(traj("onpolicy_sft", s, 1e-4, [(50, 60, 0.0, 60, 0.0)]))
    return frames(parts)


def verdict(fr, statement_start):
    g, rows = claims(fr)
    return g, next(c for c in rows if c.statement.startswith(statement_start))


def test_claim_reproduced_not_reproduced_and_not_tested():
    g, c = verdict(_world([30, 32, 34], [0, 1, 0]), "RL (GRPO)")
    assert g == pytest.approx(30.0) and c.verdict == "reproduced"        # half of the anchors' smallest val gain
    assert verdict(_world([1, 2, 0], [0, 1, 2]), "RL (GRPO)")[1].verdict == "not reproduced"
    # GRPO's gain far below SFT's: the drop test passes but comparable gain does not
    assert verdict(_world([30, 32, 34], [0, 1, 0], gains=(60, 40)), "RL (GRPO)")[1].verdict == "not reproduced"
    # a seed that never reaches g: not tested, and the result says which
    g2, c = verdict(_world([30, 32, 34], [0, 1, 0], other="trapo", other_never=True), "TRAPO")
    assert c.verdict == "not tested" and "1 of 3 seeds never reached g" in c.result
    # with the evidence: the highest validation gain the missing seed had anywhere (10 at lr 1e-4, step 50)
    assert "highest validation gain at any lr and checkpoint is +10.0 (lr 1.0e-04, seed 0, step 50)" in c.result
    assert verdict(_world([30, 32, 34], [0, 1, 0]), "IDFT")[1].verdict == "not tested"   # idft not in the sweep
    # fewer seeds than a comparison needs
    assert verdict(_world([30, 32], [0, 1], seeds=2), "RL (GRPO)")[1].verdict == "not tested"


def test_claims_are_data_and_cover_the_seed_papers():
    sources = {c.source.split(" (")[0] for c in CLAIMS}
    assert {"Retaining by Doing", "TMS", "TRAPO", "Towards On-Policy SFT", "RL's Razor"} <= sources
    assert all(c.predictor or c.more for c in CLAIMS)


def test_predictor_sign_reversal_is_not_reproduced():
    fin = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4, "x": [1, 2, 3, 4, 5, 6, 7, 8.],
                        "nontarget_drop": [8, 7, 6, 5, 4, 3, 2, 1.]})
    res, v = predictor_test(fin, "x")
    assert v == "not reproduced" and "opposite sign" in res and "within-method r: a -1.00, b -1.00" in res
    fin["nontarget_drop"] = fin["x"] * 2 + np.array([0, .1, 0, .1, 0, .1, 0, .1])
    assert predictor_test(fin, "x")[1] == "reproduced"


def test_best_gain_reads_eval_at_the_validation_choice():
    parts = [traj("sft", 0, 1e-3, [(50, 50, 0, 30, 0)]), traj("sft", 0, 1e-4, [(50, 40, 0, 70, 0)])]
    assert best_gain(pd.concat(parts), "sft").values == [30.0]   # 1e-3 is best on validation; eval says 30


def test_dial_by_style_and_its_verdict_needs_four_styles():
    parts = []
    for s in range(3):
        for style, d in (("worked", 30 + s), ("mild", 5 + s), ("own", s * 0.5)):
            parts.append(traj("sft", s, 1e-3, [(50, 60, d, 60, d)], style=style,
                              arm="sft" if style == "worked" else f"sft@{style}"))
        parts.append(traj("grpo", s, 1e-4, [(50, 60, 0, 60, 0)]))
        parts.append(traj("onpolicy_sft", s, 1e-4, [(50, 60, 0, 60, 0)]))
    fr = frames(parts)
    fr.all_runs["base/label_nll_seq"] = fr.all_runs["teacher_style"].map({"worked": 150.0, "mild": 50.0, "own": 1.0})
    table = dial(fr, 30.0)
    assert table["teacher_style"].tolist() == ["own", "mild", "worked"]
    assert table["drop_at_g"].tolist() == pytest.approx([0.25, 3.0, 15.5])  # g = 30 is crossed halfway to step 50
    assert table["seeds_at_g"].tolist() == [3, 3, 3]
    res, v = dial_verdict(table)   # 3 styles: no ordering reaches α (1/3! = 0.17); tests/test_dial.py has the test
    assert v == "not tested" and "≥ 4 teacher styles" in res


def test_arm_drop_counts_missing_seeds():
    per = pd.DataFrame({"arm": ["a", "a"], "seed": [0, 1], "crossed": [True, False], "nontarget_drop": [2.0, np.nan],
                        "nontarget_drop_lo": [1.0, np.nan], "nontarget_drop_hi": [3.0, np.nan]})
    e = arm_drop(per, "a")
    assert e.values == [2.0] and e.missing == 1 and e.seeds == 2 and not e.ok


def test_crossworld_table_one_row_per_world(tmp_path):
    from reports.crossworld import crossworld_table, write_crossworld
    worlds = []
    for name, drops in (("a", [30, 32, 34]), ("b", [1, 2, 0])):
        fr = _world(drops, [0, 1, 0])
        fr.experiment = name
        for df in (fr.runs, fr.ckpts):
            df["target"], df["world"], df["world_seed"] = "sort", "toy", 0
        fr.runs["base/label_nll_seq"] = 150.0
        fr.base = pd.DataFrame({"acc/sort": [31.5]})
        worlds.append(fr)
    table = crossworld_table(worlds)
    assert table["experiment"].tolist() == ["a", "b"]
    assert table["GRPO: less drop than SFT at comparable gain"].tolist() == ["reproduced", "not reproduced"]
    assert table["g"].tolist() == [30.0, 30.0] and table["base accuracy on target (%)"].tolist() == [31.5, 31.5]
    assert table.loc[0, "sft drop at g"].startswith("16.0 [")   # mean of 30, 32, 34 crossed halfway: 32 / 2
    files = write_crossworld(worlds, tmp_path)
    assert "reproduced" in files["crossworld.md"].read_text() and files["crossworld.csv"].exists()


def test_a_variant_of_a_claims_subject_gets_its_own_row():
    fr = _world([30, 32, 34], [0, 1, 0])
    extra = [traj("grpo", s, 1e-4, [(50, 60, d, 60, d)], arm="grpo@hot") for s, d in enumerate([31, 33, 35])]
    fr.all_ckpts = pd.concat([fr.ckpts, *extra], ignore_index=True)
    g, rows = claims(fr)
    main = next(c for c in rows if c.statement.startswith("RL (GRPO)") and "variant" not in c.statement)
    var = next(c for c in rows if c.statement.endswith("[variant grpo@hot]"))
    assert main.verdict == "reproduced" and var.verdict == "not reproduced" and "grpo@hot" in var.result
    assert not any("sft@" in c.statement for c in rows)   # only the subject's variants get rows


def test_no_matched_gain_names_the_anchor_seeds_that_never_gained():
    parts = []
    for s in range(3):
        top = -5.0 if s == 1 else 60.0   # SFT's seed 1 only lost target accuracy (its best is -5)
        parts.append(traj("sft", s, 1e-3, [(50, top, 30.0, top, 30.0)]))
        parts.append(traj("grpo", s, 1e-4, [(50, 60, 0.0, 60, 0.0)]))
        parts.append(traj("onpolicy_sft", s, 1e-4, [(50, 60, 0.0, 60, 0.0)]))
    g, c = verdict(frames(parts), "RL (GRPO)")
    assert math.isnan(g) and c.verdict == "not tested"
    assert "never gained on validation (sft seed 1 (best -5.0))" in c.result
