"""GRPO and TRAPO: advantages, clipping, KL estimators, loss aggregation, TRAPO's guidance rules, prefix cuts,
TrSFT gradients, the micro-group data assembly, and end-to-end training on the micro world."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import methods.trapo as trapo_mod
from harness.config import TrainConfig
from harness.data import Example, collate
from harness.engine import Trainer
from harness.sampler import Completion
from methods._policy_gradient import clipped_surrogate, token_scale
from methods.common import Sampled, group_advantages, k2, k3
from methods.grpo import GRPO, GRPOConfig
from methods.trapo import MICRO_GROUPS, TRAPO, TRAPOConfig, guidance, prefix_end, trsft_loss
from method_harness import build, train

torch.set_num_threads(1)
LN2 = math.log(2)
CTX8 = SimpleNamespace(world=SimpleNamespace(max_new_tokens=8))  # L_max = 8


# ---------------------------------------------------------------- GRPO pieces

def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean .5 -> centred [.5, -.5, -.5, .5]; sample std sqrt(4 · .25 / (4 − 1)) = sqrt(1/3) = 0.57735
    # (Bessel, as TRL and RbD; the population std would be .5) -> ±.5 / (0.57735 + 1e-4) = ±0.86588
    assert torch.allclose(group_advantages(r, scale=False), torch.tensor([[0.5, -0.5, -0.5, 0.5]]))
    assert torch.allclose(group_advantages(r), torch.tensor([[1.0, -1.0, -1.0, 1.0]]) * 0.86588, atol=1e-5)
    # G = 2, rewards (1, 0): sample std sqrt(2 · .25 / 1) = 0.70711 -> ±.5 / 0.70721 = ±0.70701
    assert torch.allclose(group_advantages(torch.tensor([[1.0, 0.0]])), torch.tensor([[0.70701, -0.70701]]), atol=1e-5)
    assert torch.equal(group_advantages(torch.ones(1, 4)), torch.zeros(1, 4))  # uniform group: no signal


def test_clipped_surrogate_by_hand():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()  # old_logp = 0 -> ratio = exp(logp)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, binds = clipped_surrogate(logp, torch.zeros(1, 4), adv, 0.2, 0.2)
    # ρ=1.5,A=+1: −min(1.5, 1.2) = −1.2 (clipped) | ρ=.5,A=+1: −min(.5, .8) = −.5 (unclipped)
    # ρ=1.5,A=−1: −min(−1.5, −1.2) = 1.5 (unclipped) | ρ=.5,A=−1: −min(−.5, −.8) = .8 (clipped)
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5, 1.5, 0.8]]))
    assert binds.tolist() == [[1.0, 0.0, 0.0, 1.0]] and binds.mean() == 0.5           # clip fraction 2/4
    loss.sum().backward()
    # d/dlogp of −ρA = −ρA where unclipped; 0 where the clip binds
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5, 1.5, 0.0]]))
    # ε_high = 0.28 (DAPO): ρ=1.5 is still clipped, now at 1.28
    assert clipped_surrogate(logp.detach(), torch.zeros(1, 4), adv, 0.2, 0.28)[0][0, 0] == pytest.approx(-1.28)


def test_kl_estimators_by_hand():
    logp = torch.tensor([0.0, 0.0, 0.0])
    ref = torch.tensor([0.0, LN2, -LN2])                                   # d = ref − logp
    # k3 = e^d − d − 1: d=0 -> 0; d=ln2 -> 2 − ln2 − 1 = 0.3069; d=−ln2 -> .5 + ln2 − 1 = 0.1931
    assert torch.allclose(k3(logp, ref), torch.tensor([0.0, 1 - LN2, LN2 - 0.5]))
    assert k3(logp, ref)[1].item() == pytest.approx(0.3069, abs=1e-4)
    # k2 = ½ (logp − ref)²: 0, ½ ln²2 = 0.2402, 0.2402
    assert torch.allclose(k2(logp, ref), torch.tensor([0.0, 0.5 * LN2 ** 2, 0.5 * LN2 ** 2]))


def _two_sequences() -> list[Example]:
    # responses of lengths 2 and 4; with ratio 1 the surrogate is −A per token: 1 on row 0, 2 on row 1
    return [Example([5], [6, 7], fields={"adv": -1.0}), Example([5], [6, 7, 8, 9], fields={"adv": -2.0})]


@pytest.mark.parametrize("loss_type,expected", [
    ("grpo", (2 * 1 / 2 + 4 * 2 / 4) / 2),       # token mean per sequence (1 and 2), then mean over 2 = 1.5
    ("dr_grpo", (2 * 1 / 8 + 4 * 2 / 8) / 2),    # per-sequence sum / L_max=8 (.25 and 1), then mean = 0.625
    ("bnpo", (2 * 1 + 4 * 2) / 6),               # sum over the step / its 6 tokens = 10/6
    ("dapo", (2 * 1 + 4 * 2) / 6),               # the same: the engine reduces over the whole step
])
def test_loss_type_normalisation_through_the_engine(loss_type, expected):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))
    method = GRPO(GRPOConfig(beta=0.0, loss_type=loss_type))
    assert method.reduction == ("token" if loss_type in ("bnpo", "dapo") else "sequence")
    tr = Trainer(model, 0, TrainConfig(micro_batch_size=1, max_steps=1))  # micro-batches of 1: accumulation path
    stats = tr.update(_two_sequences(), method.loss, CTX8, method.reduction)
    assert stats["loss"] == pytest.approx(expected)
    assert token_scale(loss_type, collate(_two_sequences(), 0).loss_mask, 8).shape == (2, 1)


def test_grpo_loss_uses_old_and_reference_logps():
    ex = Example([5], [6], fields={"adv": 1.0},
                 token_fields={"old_logp": [math.log(1 / 1.5)], "ref_logp": [-LN2]})
    batch = collate([ex], 0)
    batch.logp = torch.zeros(1, 1, requires_grad=True)                    # ratio = 1 / (1/1.5) = 1.5
    batch.entropy = torch.ones(1, 1)
    out = GRPO(GRPOConfig(beta=0.05, kl_estimator="k3")).loss(CTX8, batch)
    # clipped surrogate −min(1.5, 1.2) = −1.2; k3 with d = ref − logp = −ln2: .5 + ln2 − 1 = 0.19315
    # total −1.2 + .05 · 0.19315 = −1.19034; grpo scale 1/|o| = 1
    assert out.token_loss.item() == pytest.approx(-1.2 + 0.05 * (LN2 - 0.5))
    assert out.stats["clip_frac"] == 1.0 and out.stats["ratio"] == pytest.approx(1.5)
    assert out.stats["kl"] == pytest.approx(LN2 - 0.5)


# ---------------------------------------------------------------- TRAPO pieces

@pytest.mark.parametrize("s1", range(5))
def test_guidance_for_every_cumulative_success_pattern(s1):
    for s2 in range(s1, s1 + 3):                  # stage 2 adds 0..2 successes
        for s3 in range(s2, s2 + 2):              # stage 3 adds 0..1
            # the rules as success rates: 25% if S1/4 < 1/2; 50% if S2/6 < 2/3; full expert if S3/7 < 1
            assert guidance(0, 0) == 0.0
            assert guidance(1, s1) == (0.25 if s1 / 4 < 1 / 2 else 0.0)
            assert guidance(2, s2) == (0.5 if s2 / 6 < 2 / 3 else 0.0)
            assert guidance(3, s3) == (1.0 if s3 / 7 < 1 else 0.0)
    assert [g[0] for g in MICRO_GROUPS] == [4, 2, 1, 1]


def test_prefix_cut_points():
    label, comma = list("1,2,3,5,8|12358"), (lambda t: t == ",")      # L = 15
    # ρ=.25: ⌊3.75⌋ = 3; first ',' after index 3 is index 5 < .55·15 = 8.25 -> cut after it: "1,2,3,"
    assert prefix_end(label, 0.25, comma) == 6
    # ρ=.5: ⌊7.5⌋ = 7; no ',' after index 7 -> floor: "1,2,3,5"
    assert prefix_end(label, 0.5, comma) == 7
    ids = list(range(20))                                               # L = 20
    # ρ=.25: threshold 5; break at 7 (< 11) -> 8; break at 12 (>= 11) -> 5; a break AT the threshold does not count
    assert prefix_end(ids, 0.25, lambda t: t == 7) == 8
    assert prefix_end(ids, 0.25, lambda t: t == 12) == 5
    assert prefix_end(ids, 0.25, lambda t: t == 5) == 5
    # ρ=.5: threshold 10; break at 14 < 16 -> 15; ρ=1: the whole trajectory
    assert prefix_end(ids, 0.5, lambda t: t == 14) == 15
    assert prefix_end(ids, 1.0, lambda t: False) == 20


@pytest.mark.parametrize("logits,inside", [([2.0, 0.0, 0.0], True), ([-3.0, 0.0, 0.0], False)])
def test_trsft_gradient_inside_and_outside_the_trust_region(logits, inside):
    x = torch.tensor(logits, requires_grad=True)
    logp = torch.log_softmax(x, -1)[0]
    p = logp.exp().item()                                               # e²/(e²+2) = .787 | e⁻³/(e⁻³+2) = .0243
    assert (p >= 0.1) == inside
    (g_trsft,) = torch.autograd.grad(trsft_loss(logp, 0.1), x, retain_graph=True)
    (g_nll,) = torch.autograd.grad(-logp, x)
    # inside: −∇p/p = −∇log p; outside: −∇p/α = −(p/α)∇log p
    assert torch.allclose(g_trsft, g_nll if inside else (p / 0.1) * g_nll, atol=1e-6)
    assert trsft_loss(logp, 0.1).item() == pytest.approx(-1.0 if inside else -p / 0.1)


def test_trapo_loss_by_hand():
    a = Example([5], [6, 7, 8], fields={"adv": 0.5}, token_fields={"prefix": [1, 1, 0], "trsft": [1, 1, 0]})
    b = Example([5], [6, 7, 8], fields={"adv": -0.5}, token_fields={"prefix": [1, 0, 0], "trsft": [0, 0, 0]})
    batch = collate([a, b], 0)
    batch.logp = torch.log(torch.tensor([[0.5, 0.05, 0.2], [0.5, 0.05, 0.2]])).requires_grad_()
    batch.entropy = torch.ones(2, 3)
    out = TRAPO(TRAPOConfig()).loss(CTX8, batch)
    e = 0.001                                                           # entropy bonus, H = 1 everywhere
    expected = torch.tensor([
        [-0.5 / 0.5 - e, -0.05 / 0.1 - e, -0.5 - e],   # TrSFT −p/max(p,.1): −1, −.5; RL −A = −.5
        [0.0 - e, 0.5 - e, 0.5 - e],                    # unmasked prefix: entropy only; RL −A = +.5
    ]) / 8                                              # / L_max
    assert torch.allclose(out.token_loss, expected)
    assert out.stats["expert_p"] == pytest.approx((0.5 + 0.05) / 2) and out.stats["trust_frac"] == 0.5


def test_trapo_micro_groups_assemble_the_group(micro_world, monkeypatch):
    ctx, method, _ = build(micro_world, "trapo", ["trapo.prompts_per_step=1"])
    script = iter([[0, 1, 0, 0], [1, 1], [1]])  # S1 = 1 -> 25%; S2 = 3 -> 50%; S3 = 4 -> full expert
    seen = []

    def fake(ctx_, items, n, temperature, top_p=1.0, prefix_ids=None, sampler=None):
        seen.append(prefix_ids)
        rewards = next(script)
        return [Sampled(it, [Completion(ctx_.encode(it.prompt) + list(px), [9, 2], "x", True)] * n,
                        [float(r) for r in rewards]) for it, px in zip(items, prefix_ids)]

    monkeypatch.setattr(trapo_mod, "sample_and_verify", fake)
    ex = method.data(ctx, 0).examples
    item = next(it for it in ctx.world.train_items if ctx.encode(it.prompt) == ex[0].prompt_ids)
    label, comma = ctx.encode(item.label), ctx.encode(",")[0]
    k25, k50 = (prefix_end(label, rho, lambda t: t == comma) for rho in (0.25, 0.5))
    assert seen == [[[]], [label[:k25]], [label[:k50]]]  # expert prefixes go in as ids, never re-tokenized
    assert len(ex) == 8 and [len(e.response_ids) for e in ex[:4]] == [2] * 4
    assert ex[4].token_fields["prefix"] == [1.0] * k25 + [0.0, 0.0] and sum(ex[4].token_fields["trsft"]) == 0
    assert ex[5].token_fields["trsft"] == ex[5].token_fields["prefix"]           # only the 2nd 25% rollout
    assert ex[6].token_fields["trsft"] == [1.0] * k50 + [0.0, 0.0]
    assert ex[7].response_ids == label + [ctx.tokenizer.eos_token_id] and set(ex[7].token_fields["trsft"]) == {1.0}
    # rewards [0,1,0,0, 1,1, 1, 1 (expert label verifies)] -> mean 5/8; A = r − .625
    assert [e.fields["adv"] for e in ex] == pytest.approx([r - 0.625 for r in [0, 1, 0, 0, 1, 1, 1, 1]])
    stats = ctx.logged[-1][1]
    assert (stats["train/n_prefix25"], stats["train/n_prefix50"], stats["train/n_full_expert"]) == (1, 1, 1)
    # all correct: no guidance anywhere and stage 4 is an unguided rollout
    script, seen[:] = iter([[1] * 4, [1, 1], [1], [1]]), []
    ex = method.data(ctx, 1).examples
    assert seen == [[[]]] * 4 and len(ex) == 8 and all(sum(e.token_fields["prefix"]) == 0 for e in ex)
    assert all(e.fields["adv"] == 0 for e in ex)


# ---------------------------------------------------------------- end to end

def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name,overrides", [
    # the micro base sorts ~25% of prompts when sampling, so 8 groups of 8 are almost surely mixed and carry
    # a gradient. Second case: μ = 2 (stored π_old, clip), k3, dapo.
    ("grpo", ["grpo.prompts_per_step=8", "grpo.group_size=8"]),
    ("grpo", ["grpo.prompts_per_step=8", "grpo.group_size=8", "grpo.num_iterations=2",
              "grpo.kl_estimator=k3", "grpo.loss_type=dapo", "grpo.scale_rewards=false"]),
    ("trapo", ["trapo.prompts_per_step=2"]),
])
def test_trains_two_steps_on_micro(micro_world, name, overrides):
    torch.manual_seed(0)
    ctx, method, trainer = build(micro_world, name, overrides)
    stats = train(ctx, method, trainer, 2)
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats)
    assert not torch.allclose(_params(ctx.policy), _params(micro_world[1]))
    logged = {k for _, s in ctx.logged for k in s}
    assert "train/reward_mean" in logged and "train/mixed_group_frac" in logged
    if name == "grpo":
        assert "kl" in stats[0] and "clip_frac" in stats[0]
    else:
        assert {"train/expert_reward", "train/prefix_ratio", "train/n_full_expert"} <= logged
