"""Metric definitions against hand-computed values (arithmetic in the comments)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.metrics import (bootstrap_cis, eval_mode, kl_to_base, nontarget_drop, pld, pld_rise, sequence_nll,
                             target_gain, zero_flip_bound)


class TableLM(torch.nn.Module):
    """A fake causal LM over a 2-token vocabulary: the logits at a position depend only on that position's token."""

    def __init__(self, table: list[list[float]]):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))  # [V, V]: row = current token, col = next-token logit

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])  # [B, T, V]


LN3 = math.log(3.0)
# BASE: after token 0 -> p(next) = (1/2, 1/2); after token 1 -> softmax(ln 3, 0) = (3/4, 1/4).
BASE = [[0.0, 0.0], [LN3, 0.0]]
UNIFORM = [[0.0, 0.0], [0.0, 0.0]]
# Example 1: tokens [1 | 0 0]; response tokens are predicted after tokens 1 and 0.
# Example 2: tokens [0 1 1 | 0]; the one response token is predicted after token 1.
# (An off-by-one would use the positions after tokens 0,0 and 0; leaking prompt positions would add
#  the predictions after the prompt's own tokens -- both change the values below.)
PROMPTS = [[1], [0, 1, 1]]
RESPONSES = [[0, 0], [0]]


def test_target_gain_in_points():
    # mean policy 3/4 = 75 points, mean base 1/4 = 25 points -> 75 - 25 = 50
    assert target_gain(np.array([0, 0, 1, 0.]), np.array([1, 0, 1, 1.])) == pytest.approx(50.0)


def test_nontarget_drop_mean_and_per_task():
    base = {"a": np.array([1, 1, 1, 1.]), "b": np.array([1, 0, 1, 0.]), "t": np.zeros(4)}
    policy = {"a": np.array([1, 1, 0, 0.]), "b": np.array([1, 1, 1, 0.]), "t": np.ones(4)}
    mean, per = nontarget_drop(base, policy, ["a", "b"])
    # a: 100 - 50 = 50 (forgot); b: 50 - 75 = -25 (improved); mean (50 - 25) / 2 = 12.5; "t" is not a retention task
    assert per == pytest.approx({"a": 50.0, "b": -25.0})
    assert mean == pytest.approx(12.5)
    assert math.isnan(nontarget_drop(base, policy, [])[0])


def _pair(rng, n, p_base, p_policy):
    return (rng.random(n) < p_base).astype(float), (rng.random(n) < p_policy).astype(float)


def test_bootstrap_ci_contains_point_estimates_and_is_deterministic():
    rng = np.random.default_rng(1)
    base, policy = {}, {}
    for t, (pb, pp) in {"t": (0.3, 0.6), "a": (0.9, 0.8), "b": (0.8, 0.7)}.items():
        base[t], policy[t] = _pair(rng, 300, pb, pp)
    ci = bootstrap_cis(base, policy, "t", ["a", "b"], iters=2000, seed=0)
    gain = target_gain(base["t"], policy["t"])
    drop, _ = nontarget_drop(base, policy, ["a", "b"])
    assert ci["target_gain_lo"] < gain < ci["target_gain_hi"]
    assert ci["nontarget_drop_lo"] < drop < ci["nontarget_drop_hi"]
    # Width near the normal approximation 2 * 1.96 * sd(diff) / sqrt(n) (loose: bootstrap noise).
    d = 100 * (policy["t"] - base["t"])
    normal = 2 * 1.96 * d.std() / math.sqrt(len(d))
    assert ci["target_gain_hi"] - ci["target_gain_lo"] == pytest.approx(normal, rel=0.15)
    assert bootstrap_cis(base, policy, "t", ["a", "b"], iters=2000, seed=0) == ci


def test_bootstrap_is_paired():
    # Policy == base example by example, but examples vary: no example flipped, so the interval is the exact
    # zero-flip bound 100·(1 − 0.025^(1/200)) = 1.827 points, not the unpaired ~13.9 (2·1.96·sqrt(2·.25/200)·100).
    x = np.array([0, 1.] * 100)
    ci = bootstrap_cis({"t": x, "a": x}, {"t": x.copy(), "a": x.copy()}, "t", ["a"], iters=500)
    u = 100 * (1 - 0.025 ** (1 / 200))
    assert ci == pytest.approx({"target_gain_lo": -u, "target_gain_hi": u, "nontarget_drop_lo": -u,
                                "nontarget_drop_hi": u})
    assert u == pytest.approx(1.827, abs=1e-3)
    # Constant paired difference: policy always right, base always wrong -> every resample gives +100.
    ci = bootstrap_cis({"t": np.zeros(50)}, {"t": np.ones(50)}, "t", [], iters=100)
    assert ci["target_gain_lo"] == ci["target_gain_hi"] == pytest.approx(100.0)
    assert math.isnan(ci["nontarget_drop_lo"])


def test_bootstrap_rejects_unpaired_arrays():
    with pytest.raises(ValueError, match="paired"):
        bootstrap_cis({"t": np.zeros(3)}, {"t": np.zeros(4)}, "t", [])


def test_zero_flip_bound_by_hand():
    # 0 flips among 400 retention items (4 tasks x 100): 1 - 0.025^(1/400) = 0.918% -> ±0.92 points
    assert zero_flip_bound([100] * 4) == pytest.approx(100 * (1 - 0.025 ** (1 / 400)))
    assert zero_flip_bound([100] * 4) == pytest.approx(0.918, abs=1e-3)
    # unequal tasks: bounded through the smallest task's weight 1/(2·100) vs the uniform 1/300
    assert zero_flip_bound([100, 200]) == pytest.approx(100 * (1 - 0.025 ** (1 / 300)) * 300 / 200)


def test_pld_rise_from_the_running_minimum():
    assert pld_rise([3.0]) == 0.0                   # the base: no rise
    assert pld_rise([3.0, 2.0, 2.5]) == pytest.approx(0.5)   # dips to 2.0, then rises by 0.5
    assert pld_rise([3.0, 2.0, 1.0]) == 0.0          # still falling


def test_sequence_nll_mean_and_sum():
    model = TableLM(BASE)
    # Ex 1: after 1, p(0) = 3/4 -> ln(4/3) = 0.2877; after 0, p(0) = 1/2 -> ln 2 = 0.6931.
    #       sum = ln(4/3) + ln 2 = ln(8/3) = 0.9808; mean = 0.4904.
    # Ex 2: after 1, p(0) = 3/4 -> ln(4/3) = 0.2877 (sum = mean).
    ex1_sum, ex2 = math.log(8 / 3), math.log(4 / 3)
    for bs in (1, 2):  # batched (right padding) and one at a time agree
        assert sequence_nll(model, PROMPTS, RESPONSES, bs, pad_id=0) == pytest.approx([ex1_sum / 2, ex2])
        assert sequence_nll(model, PROMPTS, RESPONSES, bs, pad_id=1, per_token=False) == pytest.approx([ex1_sum, ex2])
    # PLD = mean over examples of the per-token mean: (0.4904 + 0.2877) / 2 = 0.3890
    assert pld(model, PROMPTS, RESPONSES, 2, pad_id=0) == pytest.approx((ex1_sum / 2 + ex2) / 2)


def test_sequence_nll_empty_response_and_prompt():
    # An empty response (a model that ends at once) sums to 0 nats and has no per-token mean.
    assert sequence_nll(TableLM(BASE), [[1], [1]], [[], [0]], 2, pad_id=0, per_token=False) == pytest.approx(
        [0.0, math.log(4 / 3)])
    assert math.isnan(sequence_nll(TableLM(BASE), [[1]], [[]], 1, pad_id=0)[0])
    with pytest.raises(ValueError, match="prompt is empty"):
        sequence_nll(TableLM(BASE), [[]], [[1]], 1, pad_id=0)


def test_kl_to_base_by_hand():
    base, policy = TableLM(BASE), TableLM(UNIFORM)
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.30410 - 0.17329 = 0.13081 (after token 1)
    # KL((1/2, 1/2) || (1/2, 1/2)) = 0 (after token 0)
    k = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # Ex 1: positions after tokens 1, 0 -> k + 0; Ex 2: position after token 1 -> k. Mean over samples = k.
    for bs in (1, 2):
        assert kl_to_base(policy, base, PROMPTS, RESPONSES, bs, pad_id=0) == pytest.approx(k)
    # The direction matters: KL((1/2,1/2) || (3/4,1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.14384
    assert kl_to_base(base, policy, PROMPTS, RESPONSES, 2, pad_id=0) == pytest.approx(0.5 * math.log(4 / 3))
    assert kl_to_base(base, base, PROMPTS, RESPONSES, 2, pad_id=0) == pytest.approx(0.0, abs=1e-7)


def test_kl_ignores_tokens_the_base_rules_out():
    # Base puts p = 0 on token 1 (logit -inf): 0 * log 0 counts as 0, so KL = 1 * ln(1 / (1/2)) = ln 2.
    base = TableLM([[0.0, -math.inf], [0.0, -math.inf]])
    assert kl_to_base(TableLM(UNIFORM), base, [[0]], [[0]], 1, pad_id=0) == pytest.approx(math.log(2))


def test_eval_mode_restores_each_module():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a part frozen in eval mode must stay so
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training

