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


def test_drop_at_gain_selects_on_validation_and_reads_eval_at_its_own_crossing():
    a = traj("sft", 0, 1e-3, [(25, 40, 20, 38, 22), (50, 60, 30, 62, 33)])
    b = traj("sft", 0, 1e-4, [(25, 10, 2, 15, 3), (50, 30, 4, 35, 6)])
    row = drop_at_gain(pd.concat([a, b]), 20.0).iloc[0]
    # validation: 1e-3 crosses at step 12.5 with val drop 10; 1e-4 at step 37.5 with val drop 3 -> 1e-4 is chosen
    assert row["lr"] == 1e-4 and row["select_step"] == pytest.approx(37.5)
    assert row["select_val_drop"] == pytest.approx(3.0)
    # read point: 1e-4's eval gain reaches 20 a quarter of the way from (25, 15) to (50, 35): step 31.25
    assert row["step"] == pytest.approx(31.25) and row["target_gain"] == pytest.approx(20.0)
    assert row["nontarget_drop"] == pytest.approx(3.75) and row["val/target_gain"] == pytest.approx(15.0)
    assert (row["nontarget_drop_lo"], row["nontarget_drop_hi"]) == pytest.approx((2.75, 4.75))
    # the seed's prompt half-width: hypot(drop half 1, chord slope 3.75 / 20 × gain half 2)
    assert row["prompt_half"] == pytest.approx(math.hypot(1.0, 3.75 / 20 * 2.0))
    assert row["runs"] == 2 and row["runs_crossed"] == 2 and row["crossed"]
    # same lr's final eval gain, for "comparable gain"
    assert row["final_gain"] == 35.0 and row["final_gain_half"] == 2.0
    # crossing before the first checkpoint interpolates from the base, whose interval is its own value 0:
    # eval reaches 20 at 20/38 of the way to step 25
    first = drop_at_gain(a, 20.0).iloc[0]
    assert first["nontarget_drop"] == pytest.approx(22 * 20 / 38) and first["nontarget_drop_lo"] == pytest.approx(21 * 20 / 38)


def test_a_seed_that_reaches_g_on_validation_but_not_on_eval_is_missing():
    parts = [traj("sft", 0, 1e-3, [(50, 60, 10, 25, 10)])]
    row = drop_at_gain(pd.concat(parts), 30.0).iloc[0]
    assert row["crossed_val"] and not row["crossed"]
    e = arm_drop(drop_at_gain(pd.concat(parts), 30.0), "sft")
    assert e.missing == 1 and e.eval_only == 1 and "reached it on validation but not on eval" in e.why_not("sft")


def test_matched_level_reads_validation_of_the_anchors_only():
    parts = [traj("sft", 0, 1e-3, [(25, 40, 20, 99, 1)]), traj("grpo", 0, 1e-4, [(25, 30, 0, 99, 0)]),
             traj("idft", 0, 1e-4, [(25, 2, 0, 99, 0)])]
    assert matched_level(pd.concat(parts)) == pytest.approx(15.0)   # min(40, 30) / 2; eval gains ignored


def test_seed_interval_and_estimate_by_hand():
    mean, lo, hi = S.seed_interval([10.0, 20.0, 30.0], [1.96, 1.96, 1.96])
    # seed term sd²/n = 100/3; prompt term (1.96 / z₀.₉₇₅)² ≈ 1.0; Satterthwaite df = (100/3 + v)² / ((100/3)² / 2)
    v = (1.96 / sps.norm.ppf(0.975)) ** 2
    df = (100 / 3 + v) ** 2 / ((100 / 3) ** 2 / 2)
    half = sps.t.ppf(0.975, df) * math.sqrt(100 / 3 + v)
    assert (mean, lo, hi) == pytest.approx((20.0, 20 - half, 20 + half))
    # seeds that agree exactly: the prompt term alone, normal quantile
    assert S.seed_interval([4.0, 4.0, 4.0], [2.0, 2.0, 2.0]) == pytest.approx((4.0, 2.0, 6.0))
    assert S.seed_interval([5.0], [2.0]) == pytest.approx((5.0, 3.0, 7.0))
    e = estimate([], [], seeds=2, missing=2)
    assert math.isnan(e.mean) and not e.ok and "2 of 2 seeds never reached g" in e.why_not("x")
    assert not estimate([1.0] * (MIN_SEEDS - 1)).ok and estimate([1.0] * MIN_SEEDS).ok


def test_tests_without_prompt_error_are_welchs_and_with_it_add_the_shared_term():
    a, b = [30.0, 31.0, 32.0], [0.0, 0.5, 1.0]
    t = S.directional(a, b)
    assert t.sign == 1 and t.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert S.directional(b, a).sign == -1      # significant the other way: a contradiction, not "no"
    sft, grpo = [60.0, 62.0, 64.0], [58.0, 59.0, 61.0]
    ni = S.directional(grpo, sft, shift=-5.0)
    ref = sps.ttest_ind(np.add(grpo, 5.0), sft, equal_var=False, alternative="greater").pvalue
    assert ni.p == pytest.approx(ref)
    # prompt half-widths of z₀.₉₇₅ are a variance of 1 per arm, shared by the seeds: se² = 1/3 + 1/12 + 2
    c = S.compare(a, b, [S.Z975] * 3, [S.Z975] * 3)
    assert float(c.se) == pytest.approx(math.sqrt(1 / 3 + 1 / 12 + 2))
    df = (1 / 3 + 1 / 12 + 2) ** 2 / ((1 / 3) ** 2 / 2 + (1 / 12) ** 2 / 2)
    assert float(c.df) == pytest.approx(df)
    assert float(c.p_greater) == pytest.approx(sps.t.sf(30.5 / math.sqrt(1 / 3 + 1 / 12 + 2), df))


def test_degenerate_cases_have_a_rule_and_never_an_infinite_t():
    # both arms constant over seeds, no prompt interval: no test (the old code printed t = +inf, p = 0)
    t = S.directional([1.0] * 3, [0.0] * 3)
    assert t.sign is None and "zero variance" in t.text and "inf" not in t.text
    # at a ceiling the seeds agree but the prompts still carry error: a finite test on the prompt term alone
    t = S.directional([100.0] * 3, [100.0] * 3, [1.0] * 3, [1.0] * 3, shift=-5.0)
    assert t.sign in (0, 1) and math.isfinite(t.p) and "df = ∞" in t.text


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


def test_claim_reproduced_contradicted_inconclusive_and_not_tested():
    g, c = verdict(_world([30, 32, 34], [0, 1, 0]), "RL (GRPO)")
    assert g == pytest.approx(30.0) and c.verdict == "reproduced"        # half of the anchors' smallest val gain
    # both gains at the read point: eval = g by construction, validation (= eval in this world) beside it
    assert "sft: eval 30.0, validation 30.0, step 25.0" in c.read_point
    c = verdict(_world([1, 2, 0], [0, 1, 2]), "RL (GRPO)")[1]
    assert c.verdict == "inconclusive" and "power of the tests that did not reject" in c.result
    assert verdict(_world([0, 1, 0], [30, 32, 34]), "RL (GRPO)")[1].verdict == "contradicted"
    # GRPO's final gain 20 points below SFT's (prompt half-widths 2): lower by more than the margin
    c = verdict(_world([30, 32, 34], [0, 1, 0], gains=(60, 40)), "RL (GRPO)")[1]
    assert c.verdict == "contradicted" and "lower by more than the margin" in c.result
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


def test_predictor_is_tested_on_method_means_and_a_reversal_is_contradicted():
    fin = pd.DataFrame({"method": list("aaabbbcccddd"), "x": np.arange(1, 13.), "nontarget_drop": np.arange(12, 0, -1.)})
    res, v = predictor_test(fin, "x")
    assert v == "contradicted" and "opposite sign" in res and "within-method r: a -1.00, b -1.00" in res
    assert "on the 4 methods' means" in res
    fin["nontarget_drop"] = fin["x"] * 2 + np.tile([0, .1], 6)
    assert predictor_test(fin, "x")[1] == "reproduced"
    # method means: x 2, 5, 8, 11 against drop 2/3, 1/3, 2/3, 1/3 -> r = -0.45 at the method level (p ≈ 0.72)
    fin["nontarget_drop"] = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0.]
    assert predictor_test(fin, "x")[1] == "inconclusive"
    # fewer than 4 methods: runs of one method are not independent, so there is no honest p-value
    res, v = predictor_test(fin.assign(method=list("aaaabbbbcccc")), "x")
    assert v == "not tested" and "no valid p-value" in res


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
    assert table["GRPO: less drop than SFT at comparable gain"].tolist() == ["reproduced", "inconclusive"]
    assert table["g"].tolist() == [30.0, 30.0] and table["base accuracy on target (%)"].tolist() == [31.5, 31.5]
    assert table.loc[0, "sft drop at g"].startswith("16.0 [")   # mean of 30, 32, 34 read halfway: 32 / 2
    files = write_crossworld(worlds, tmp_path)
    assert "reproduced" in files["crossworld.md"].read_text() and files["crossworld.csv"].exists()


def test_a_variant_of_a_claims_subject_gets_its_own_row():
    fr = _world([30, 32, 34], [0, 1, 0])
    extra = [traj("grpo", s, 1e-4, [(50, 60, d, 60, d)], arm="grpo@hot") for s, d in enumerate([31, 33, 35])]
    fr.all_ckpts = pd.concat([fr.ckpts, *extra], ignore_index=True)
    g, rows = claims(fr)
    main = next(c for c in rows if c.statement.startswith("RL (GRPO)") and "variant" not in c.statement)
    var = next(c for c in rows if c.statement.endswith("[variant grpo@hot]"))
    assert main.verdict == "reproduced" and var.verdict == "inconclusive" and "grpo@hot" in var.result
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


def test_clustered_correlation_against_hand_values():
    c = S.clustered_correlation([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 3, 5, 4, 6, 8], list("aabbccdd"))
    ref = sps.pearsonr([1.5, 3.5, 5.5, 7.5], [1.5, 2.5, 4.5, 7.0], alternative="greater")
    assert c["clusters"] == 4 and c["r_clusters"] == pytest.approx(ref.statistic) and c["p_pos"] == pytest.approx(ref.pvalue)
    assert c["r"] == pytest.approx(sps.pearsonr([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 3, 5, 4, 6, 8]).statistic)


def test_identical_arms_are_not_tested_and_get_no_p_value():
    parts = []
    for s in range(3):
        for arm in ("self_sft", "onpolicy_sft"):   # same draws up to g; on-policy SFT resamples only after step 50
            parts.append(traj(arm, s, 1e-4, [(50, 60, 10 + s, 60, 10 + s), (100, 70, 12 + s, 70, 30 + s)]))
        parts += [traj("sft", s, 1e-3, [(50, 60, 30, 60, 30)]), traj("grpo", s, 1e-4, [(50, 60, 0, 60, 0)])]
    c = verdict(frames(parts), "data sampled only from the initial policy")[1]
    assert c.verdict == "not tested" and "identical at the read point" in c.result and "p =" not in c.result
    # a difference at a checkpoint before the read point makes them different arms: tested
    parts[0].loc[parts[0]["step"] == 50, "target_gain"] = 61.0
    assert verdict(frames(parts), "data sampled only from the initial policy")[1].verdict != "not tested"


def test_a_bimodal_arm_at_three_seeds_is_inconclusive():
    # the held-out world: two SFT seeds read near 83, one at a low drop; GRPO near 0 with a ± 0.5 interval.
    parts = []
    for s, d in enumerate([83.2, 83.2, 10.0]):
        parts.append(traj("sft", s, 1e-3, [(50, 60, 2 * d, 60, 2 * d)]))
        parts.append(traj("grpo", s, 1e-4, [(50, 60, 0.0, 60, 0.0)]))
        parts.append(traj("onpolicy_sft", s, 1e-4, [(50, 60, 0.0, 60, 0.0)]))
    g, c = verdict(frames(parts), "RL (GRPO)")
    assert "sft 58.8 [" in c.result and c.verdict == "inconclusive"
    assert "sft > grpo: not shown" in c.result and "power" in c.result
