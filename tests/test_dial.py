"""The off-policy dial's test, whose unit is the style: hand-computed values, its four verdicts, and its calibration
under style-level nulls (≥ 2,000 simulated worlds each, numpy-vectorised) and power on monotone dose–responses."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports.dial import dial, dial_test, dial_verdict, rank_contrast_test, style_rank_test

# log label NLL of the five styles (own, sparse, mild, partial, worked), as on the micro base (nats/answer)
X = np.log([2.0, 12.4, 49.5, 75.3, 144.0])
WORLDS = 2000
# Level bound: a true 5% rate exceeds it with probability 5·10⁻⁴ at 2,000 worlds, and a true 7.5% rate stays
# under it with probability 0.079, i.e. the check fails a 7.5% procedure at least 92% of the time (asserted below).
BOUND = 0.0665


def test_the_bound_fails_a_true_seven_and_a_half_percent_rate_at_least_90_percent_of_the_time():
    cut = math.floor(BOUND * WORLDS)
    assert stats.binom.cdf(cut, WORLDS, 0.075) <= 0.10
    assert stats.binom.sf(cut, WORLDS, 0.05) <= 0.001


def test_exact_permutation_p_by_hand():
    assert style_rank_test(X, np.arange(5.0))["p_pos"] == pytest.approx(1 / 120)     # only the identity ranks so
    assert style_rank_test(X[:4], np.arange(4.0))["p_pos"] == pytest.approx(1 / 24)
    # one adjacent swap: ρ = 1 − 6·2/(5·24) = 0.9; orderings with ρ ≥ 0.9 are the identity and the 4 adjacent swaps
    r = style_rank_test(X, np.array([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert r["rho"] == pytest.approx(0.9) and r["p_pos"] == pytest.approx(5 / 120) and r["up"]
    flat = style_rank_test(X, np.zeros(5))                                              # every ordering ties
    assert flat["p_pos"] == 1.0 and flat["p_neg"] == 1.0 and not flat["up"] and not flat["down"]
    assert style_rank_test(X, -np.arange(5.0))["down"]


def test_rank_contrast_by_hand():
    seeds = np.array([[0.0, 2.0], [1, 3], [2, 4], [3, 5], [4, 6]])   # means 1..5, each seed variance 2, /n = 1
    r = rank_contrast_test(X, seeds)
    # c = −2..2: L = −2·1 − 1·2 + 0 + 1·4 + 2·5 = 10; var = Σ c² · 1 = 10; df = 10² / Σ c⁴ = 100/34
    assert r["contrast"] == pytest.approx(10.0) and r["t"] == pytest.approx(10 / math.sqrt(10))
    assert r["df"] == pytest.approx(100 / 34)
    assert r["p_pos"] == pytest.approx(stats.t.sf(10 / math.sqrt(10), 100 / 34))
    zero_var = rank_contrast_test(X, np.repeat(np.arange(5.0)[:, None], 3, axis=1))     # no seed spread
    assert zero_var["p_pos"] == 0.0 and zero_var["p_neg"] == 1.0


def _table(means, spread=1.0, seeds=5, nll=(2.0, 12.4, 49.5, 75.3, 144.0), reached=None):
    offs = np.linspace(-spread, spread, seeds)
    rows = [{"teacher_style": f"s{i}", "label_nll_seq": n, "seeds": seeds,
             "seeds_at_g": seeds if reached is None else reached[i], "values": list(m + offs)}
            for i, (m, n) in enumerate(zip(means, nll))]
    return pd.DataFrame(rows)


def test_verdicts_use_the_four_labels():
    res, v = dial_verdict(_table([0, 1, 2, 10, 50]))
    assert v == "reproduced" and "5 styles as the unit" in res and "p = 0.00833" in res
    assert dial_verdict(_table([50, 10, 2, 1, 0]))[1] == "contradicted"
    res, v = dial_verdict(_table([3, 1, 4, 1, 5], spread=4.0))
    assert v == "inconclusive" and "power" in res
    res, v = dial_verdict(_table([0, 2, 50], nll=(2.0, 49.5, 144.0)))
    assert v == "not tested" and "≥ 4 teacher styles" in res and "0.17" in res          # 1/3! = 0.17 > α
    res, v = dial_verdict(_table([0, 1, 2, 10, 50], reached=[5, 5, 5, 5, 4]))
    assert v == "not tested" and "s4: 4 of 5 seeds" in res
    assert dial_verdict(pd.DataFrame())[1] == "not tested"
    # a monotone order that only the permutation test finds (the worked style's seeds scatter over ±200)
    _, v = dial_verdict(pd.concat([_table([0, 1, 2, 3], nll=(2.0, 12.4, 49.5, 75.3), spread=0.1),
                                   _table([50], spread=200.0, nll=(144.0,))], ignore_index=True))
    assert v == "inconclusive"


def _worlds(rng, tau, sds, mu=0.0, seeds=5):
    """[WORLDS, 5, seeds] drops: style means mu + N(0, tau²) per world, seed noise N(0, sd²) per style on top."""
    means = np.asarray(mu, dtype=float) + tau * rng.standard_normal((WORLDS, len(X)))
    noise = np.asarray(sds, dtype=float)[None, :, None] * rng.standard_normal((WORLDS, len(X), seeds))
    return means[:, :, None] + noise


# Style-level nulls: the style means are unrelated to the NLL (iid across styles, or one shared value), seed noise
# on top, equal or as unequal as SFT's on the dial (tenths of a point on `own`, tens on `worked`), either way round.
NULLS = {
    "iid style means, equal seed noise": (10.0, [10] * 5),
    "iid style means, unequal seed noise": (10.0, [0.3, 1, 1, 5, 28]),
    "small style spread, unequal seed noise": (3.0, [0.3, 1, 1, 5, 28]),
    "one shared mean, unequal seed noise": (0.0, [0.3, 1, 1, 5, 28]),
    "one shared mean, unequal seed noise reversed": (0.0, [28, 5, 1, 1, 0.3]),
    "one shared mean, equal seed noise": (0.0, [10] * 5),
}


@pytest.mark.parametrize("case", list(NULLS))
@pytest.mark.parametrize("seeds", [3, 5])
def test_level_under_style_level_nulls(case, seeds):
    tau, sds = NULLS[case]
    rng = np.random.default_rng(list(NULLS).index(case) * 10 + seeds)
    r = dial_test(X, _worlds(rng, tau, sds, seeds=seeds))
    assert r["up"].mean() <= BOUND, f"{case}, {seeds} seeds: rejects {r['up'].mean():.3f}"
    assert r["down"].mean() <= BOUND


def test_the_per_seed_regression_it_replaces_fails_the_same_null():
    # Pooling 5 styles × 5 seeds as 25 points for 5 values of the NLL: rejects far above α (pseudo-replication).
    y = _worlds(np.random.default_rng(7), 10.0, [10] * 5).reshape(WORLDS, -1)
    x = np.repeat(X, 5)
    xc, yc = x - x.mean(), y - y.mean(axis=1, keepdims=True)
    b = yc @ xc / (xc @ xc)
    resid = yc - b[:, None] * xc
    t = b / np.sqrt((resid ** 2).sum(axis=1) / (len(x) - 2) / (xc @ xc))
    assert (stats.t.sf(t, len(x) - 2) < 0.05).mean() > 0.15
    # the style test on the same worlds holds
    assert dial_test(X, y.reshape(WORLDS, 5, 5))["up"].mean() <= BOUND


@pytest.mark.parametrize("name,mu,tau,sds,power", [
    # the shape of the earlier README's dial (0, 1.9, 54.9 at own, mild, worked), seed noise as there
    ("convex, as measured", [0, 0.5, 1.9, 10, 55], 0.0, [0.3, 1, 1, 10, 28], 0.95),
    ("convex, with style-level scatter", [0, 0.5, 1.9, 10, 55], 2.0, [0.3, 1, 1, 10, 28], 0.65),
    ("linear, 8 points per e-fold", 8 * X, 0.0, [10] * 5, 0.85),
])
def test_power_on_monotone_dose_responses(name, mu, tau, sds, power):
    r = dial_test(X, _worlds(np.random.default_rng(11), tau, sds, mu=mu))
    assert r["up"].mean() >= power, f"{name}: power {r['up'].mean():.3f}"
    assert r["down"].mean() <= 0.01



def _run(seed, lr, style, drop):
    """One SFT run: the base at step 0, then validation and eval both at gain 60 and drop `drop` at step 50."""
    df = pd.DataFrame({"step": [0, 50], "val/target_gain": [0.0, 60], "target_gain": [0.0, 60],
                       "val/nontarget_drop": [0.0, drop], "nontarget_drop": [0.0, drop]})
    df["nontarget_drop_lo"], df["nontarget_drop_hi"] = df["nontarget_drop"] - 1, df["nontarget_drop"] + 1
    df["target_gain_lo"], df["target_gain_hi"] = df["target_gain"] - 2, df["target_gain"] + 2
    df["method"], df["arm"], df["seed"], df["lr"], df["teacher_style"] = "sft", f"sft@{style}", seed, lr, style
    df["run_id"] = f"{style}-{seed}-{lr}"
    for k in ("kl_to_base", "pld_drift", "pld_rise"):
        df[k] = df["step"] / 50.0
    return df


def test_dial_at_a_declared_learning_rate_reads_only_its_runs():
    from reports.frame import Frames
    parts = [_run(s, lr, style, d * k) for s in range(3) for style, d in (("worked", 30 + s), ("own", 0.5 * s))
             for lr, k in ((1e-3, 1), (1e-4, 2))]                 # 1e-4: the same gain, twice the drop
    ck = pd.concat(parts, ignore_index=True)
    runs = ck.groupby("run_id").tail(1).copy()
    runs["base/label_nll_seq"] = runs["teacher_style"].map({"worked": 150.0, "own": 1.0})
    fr = Frames("t", runs, ck, pd.DataFrame(), pd.DataFrame(), runs, ck)
    # g = 30 is crossed halfway to step 50, so the read drop is half the step-50 drop: worked seeds 30, 31, 32
    # (mean 31) at 1e-3, twice that at 1e-4; own 0, 0.5, 1 (mean 0.5), twice at 1e-4
    assert dial(fr, 30.0, lr=1e-4)["drop_at_g"].tolist() == pytest.approx([0.5, 31.0])
    assert dial(fr, 30.0, lr=1e-3)["drop_at_g"].tolist() == pytest.approx([0.25, 15.5])
    assert dial(fr, 30.0)["drop_at_g"].tolist() == pytest.approx([0.25, 15.5])   # validation picks the lower drop


def test_style_arms_trained_at_one_stated_rate_read_every_style_there():
    """The default spec trains the milder styles at one rate: `worked` is then read at it too, not at its best rate."""
    from reports.dial import shared_rate
    from reports.frame import Frames
    parts = [_run(s, 1e-3, "worked", (30 + s) * 2) for s in range(3)]      # at 1e-3 twice the drop of 1e-4
    parts += [_run(s, 1e-4, "worked", 30 + s) for s in range(3)]
    parts += [_run(s, 1e-3, "own", 0.5 * s) for s in range(3)]             # `own` ran 1e-3 only
    ck = pd.concat(parts, ignore_index=True)
    runs = ck.groupby("run_id").tail(1).copy()
    runs["base/label_nll_seq"] = runs["teacher_style"].map({"worked": 150.0, "own": 1.0})
    fr = Frames("t", runs, ck, pd.DataFrame(), pd.DataFrame(), runs, ck)
    assert shared_rate(runs) == pytest.approx(1e-3)
    # g = 30 is crossed halfway to step 50: worked at 1e-3 reads (60 + 62 + 64) / 2 / 3 = 31, own 0.25
    assert dial(fr, 30.0)["drop_at_g"].tolist() == pytest.approx([0.25, 31.0])
    assert shared_rate(runs[runs["teacher_style"] == "worked"]) is None      # one style: no dial rate
