"""Calibration of the verdicts: simulated equal arms hold the 5% level, simulated differences are found.

Each simulated world runs the claims' whole procedure (reports.claims: g from validation, first crossing per
run, learning rate chosen on validation per seed, eval drop read there, Welch test on seeds) on synthetic
checkpoint frames. The arms differ in how fast they learn and how often they are evaluated (so one has far
more candidate checkpoints than the other) but, under the null, share the same true drop as a function of
true gain. Noise: binomial-sized evaluation noise, drawn independently for validation and eval, and a
per-seed random effect on the drop.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports import stats as S
from reports.claims import R2_PREDICTS, arm_drop, drop_at_gain, matched_level, predictor_test

LRS = (1e-4, 2.2e-4, 4.6e-4, 1e-3)
SD_GAIN, SD_DROP, SD_SEED = 3.5, 1.0, 1.5   # points: 200 target prompts near 50%; 400 retention prompts; seeds


def _arm(rng, method: str, seeds: int, every: int, speed: float, slope: float) -> dict[str, np.ndarray]:
    """Columns of one arm's runs: true gain 60·(1 − e^(−step·speed·√(lr/1e-3)/40)); true drop = slope · true gain
    · (lr/1e-3)^¼ + a per-seed effect. The base (step 0) is exact; every checkpoint draws val and eval noise."""
    steps = np.arange(0, 101, every, dtype=float)
    n, k = len(steps), seeds * len(LRS)
    seed = np.repeat(np.arange(seeds), len(LRS))
    lr = np.tile(LRS, seeds)
    effect = rng.normal(0, SD_SEED, seeds)[seed]
    true_gain = 60 * (1 - np.exp(-np.outer(np.sqrt(lr / 1e-3) * speed, steps) / 40))          # [k, n]
    true_drop = slope * true_gain * ((lr / 1e-3) ** 0.25)[:, None] + effect[:, None] * (steps > 0)
    trained = steps > 0

    def noisy(x, sd):
        return x + rng.normal(0, sd, (k, n)) * trained

    drop = noisy(true_drop, SD_DROP)
    return {"step": np.tile(steps, k), "val/target_gain": noisy(true_gain, SD_GAIN).ravel(),
            "val/nontarget_drop": noisy(true_drop, SD_DROP).ravel(), "target_gain": noisy(true_gain, SD_GAIN).ravel(),
            "nontarget_drop": drop.ravel(), "nontarget_drop_lo": (drop - 1.96 * SD_DROP).ravel(),
            "nontarget_drop_hi": (drop + 1.96 * SD_DROP).ravel(), "method": np.full(k * n, method),
            "seed": np.repeat(seed, n), "lr": np.repeat(lr, n),
            "run_id": np.repeat([f"{method}-{s}-{r}" for s, r in zip(seed, lr)], n)}


def _rejects(rng, seeds: int, slope_a: float, slope_b: float) -> bool:
    """One world: does the procedure say "A (sft) forgets more than B (grpo)"?"""
    a = _arm(rng, "sft", seeds, every=25, speed=1.0, slope=slope_a)
    b = _arm(rng, "grpo", seeds, every=10, speed=3.0, slope=slope_b)
    ck = pd.DataFrame({k: np.concatenate([a[k], b[k]]) for k in a})
    ck["arm"] = ck["method"]
    g = matched_level(ck)
    per = drop_at_gain(ck, g)
    a, b = arm_drop(per, "sft"), arm_drop(per, "grpo")
    assert a.ok and b.ok, "the simulated arms must all reach g"
    return S.greater(a.values, b.values).significant


def _rate(seeds: int, slope_a: float, slope_b: float, worlds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([_rejects(rng, seeds, slope_a, slope_b) for _ in range(worlds)]))


def _level_bound(worlds: int, alpha: float = 0.05) -> float:
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / worlds)   # level plus two Monte-Carlo standard errors


def test_equal_arms_hold_the_level_with_unequal_checkpoint_counts():
    for seeds, worlds in ((3, 250), (5, 250)):
        rate = _rate(seeds, 0.3, 0.3, worlds, seed=seeds)
        assert rate <= _level_bound(worlds), f"{seeds} seeds: false-positive rate {rate:.3f}"


def test_equal_arms_with_no_drop_dependence_hold_the_level():
    rate = _rate(5, 0.0, 0.0, 250, seed=11)
    assert rate <= _level_bound(250), f"false-positive rate {rate:.3f}"


def test_a_real_difference_is_found():
    # true drop at g ≈ 30: about 0.4·30 = 12 points for A vs 0.1·30 = 3 for B; seeds differ by SD_SEED = 1.5
    assert _rate(5, 0.4, 0.1, 100, seed=7) >= 0.85
    assert _rate(3, 0.4, 0.1, 100, seed=8) >= 0.6


def test_predictor_verdict_holds_its_level_and_finds_a_relation():
    rng = np.random.default_rng(3)
    worlds, n = 400, 32
    false = 0
    for _ in range(worlds):
        fin = pd.DataFrame({"method": np.repeat(["a", "b", "c", "d"], n // 4), "kl": rng.gamma(2.0, 2.0, n),
                            "nontarget_drop": rng.normal(5, 5, n)})
        false += predictor_test(fin, "kl")[1] == "reproduced"
    assert false / worlds <= _level_bound(worlds)
    found = 0
    for _ in range(100):
        kl = rng.gamma(2.0, 2.0, n)
        fin = pd.DataFrame({"method": np.repeat(["a", "b", "c", "d"], n // 4), "kl": kl,
                            "nontarget_drop": 3 * kl + rng.normal(0, 3, n)})
        found += predictor_test(fin, "kl")[1] == "reproduced"
    assert found >= 95, f"a relation with R² ≈ {R2_PREDICTS:.1f}+ was found in only {found}/100 worlds"
