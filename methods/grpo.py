"""GRPO: group-relative policy optimisation with a verifier reward (on-policy RL).

Idea: sample a group of G completions per prompt from the current policy,
score them with the task's verifier, and push up completions that beat their
group's mean reward (REINFORCE with a per-prompt baseline, PPO-clipped).
Data: every `data()` call draws `prompts_per_step` training prompts (run rng)
and samples `group_size` completions each at `temperature`; reward = verifier
× finished (truncated completions score 0, as in RbD); advantage
A = (r − mean_g r) / (std_g r + 1e-4), std_g the sample std with Bessel's
correction as TRL and RbD (`scale_rewards=False` drops the std).
The rollouts form ONE optimizer step, repeated `num_iterations` (μ) times, so
`train.max_steps` counts optimizer steps as for every method.
Loss per token: −min(ρA, clip(ρ, 1−ε, 1+ε_high)A) + β·KL(π_θ‖π_0), ρ = π_θ/π_old
(π_old = the sampling weights: stored when μ > 1, else sg[π_θ] so ρ = 1);
KL is the k2 (RbD) or k3 (DeepSeekMath) estimator against the frozen base.
Aggregation `loss_type`: grpo = token mean per sequence, then sequence mean
(DeepSeekMath, RbD); dr_grpo = per-sequence sum / max_new_tokens, then mean;
bnpo and dapo = sum over the step / its token count. bnpo and dapo coincide
here because the engine reduces once over the whole accumulated step.
Paper: DeepSeekMath (arXiv 2402.03300); defaults follow Retaining by Doing's
GRPOLoss (arXiv 2510.18874) where it decides: β = 0.05 with k2, grpo aggregation.
Deviations and choices: temperature 1.0 (DeepSeekMath/TRL; RbD uses 0.8), G = 8
(TRL; RbD 5), 16 prompts per step (RbD 32; the toy preset uses 4); the std gets +1e-4 (TRL; RbD 1e-8).
Reference log-probs come from one base forward pass per data() call, so the
KL diagnostic is logged only when β > 0 (the harness's eval-time `kl_to_base`
covers β = 0). π_old log-probs are recomputed with a separate fp32 forward pass.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.data import Example, TrainData
from methods._policy_gradient import (KL_ESTIMATORS, LOSS_REDUCTION, clipped_surrogate, draw_items, group_stats,
                                      token_scale)
from harness.method import LossOutput, Method, MethodConfig, SweepParam, register
from methods.common import example_logp, group_advantages, masked_mean, sample_and_verify


class GRPOConfig(MethodConfig):
    prompts_per_step: int = Field(16, ge=1)
    """Prompts per optimizer step (each contributes a group of `group_size` samples)."""
    group_size: int = Field(8, ge=2)
    """Completions sampled per prompt (G)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the rollouts (RbD uses 0.8)."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group std (False: Dr. GRPO's r − mean)."""
    num_iterations: int = Field(1, ge=1)
    """Optimizer steps per rollout batch (μ); above 1 the clip is active."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Lower clip range ε_low: ratios below 1 − ε stop pulling for negative advantages."""
    epsilon_high: float = Field(0.2, gt=0)
    """Upper clip range ε_high (DAPO suggests 0.28)."""
    beta: float = Field(0.05, ge=0)
    """KL coefficient to the frozen base (0 skips the base forward pass)."""
    kl_estimator: Literal["k2", "k3"] = "k2"
    """Per-token KL estimator: k2 = ½(log π_θ − log π_0)² (RbD), k3 (DeepSeekMath)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    """Loss aggregation over tokens and sequences (see the module docstring)."""


@register
class GRPO(Method):
    name = "grpo"
    rewarded = True
    description = "group-relative policy optimisation with the verifier reward (on-policy RL)"
    paper = "DeepSeekMath, arXiv 2402.03300; as used in Retaining by Doing, arXiv 2510.18874"
    order = 7
    Config = GRPOConfig
    smoke = {"prompts_per_step": 8}
    sweep = {"train.lr": SweepParam(1e-5, 3e-4), "grpo.beta": SweepParam(choices=(0.0, 0.05))}

    @property
    def reduction(self) -> str:
        return LOSS_REDUCTION[self.cfg.loss_type]

    def data(self, ctx, phase: int) -> TrainData:
        c = self.cfg
        sampled = sample_and_verify(ctx, draw_items(ctx, c.prompts_per_step), c.group_size, c.temperature)
        rewards = torch.tensor([s.rewards for s in sampled])                # [P, G]
        adv = group_advantages(rewards, scale=c.scale_rewards)              # [P, G]
        examples = [Example(comp.prompt_ids, comp.response_ids, task=s.item.task, source="self",
                            fields={"adv": float(a)})
                    for s, row in zip(sampled, adv) for comp, a in zip(s.completions, row)]
        pad, bs, prec = ctx.tokenizer.pad_token_id, ctx.score_batch_size, ctx.run_cfg.train.precision
        mine = ctx.my_share(examples)  # one step per pass: with N ranks each scores only the share it trains
        if c.num_iterations > 1:
            for e, lp in zip(mine, example_logp(ctx.policy, mine, pad, bs, prec)):
                e.token_fields["old_logp"] = lp
            ctx.cost.forward("old", examples)  # the whole step's passes: the run's total on every rank
        if c.beta > 0:
            for e, lp in zip(mine, example_logp(ctx.base, mine, pad, bs, prec)):
                e.token_fields["ref_logp"] = lp
            ctx.cost.forward("ref", examples)
        comps = [comp for s in sampled for comp in s.completions]
        ctx.log({**group_stats(rewards),
                 "completion_len": sum(len(x.response_ids) for x in comps) / len(comps),
                 "finished_frac": sum(x.finished for x in comps) / len(comps)})
        return TrainData(examples, batch_size=len(examples), shuffle=False, passes=c.num_iterations)

    def loss(self, ctx, batch) -> LossOutput:
        c, mask, logp = self.cfg, batch.loss_mask, batch.logp                # [B, T-1]
        live = mask > 0
        # Outside the response the stored fields are 0; substitute sg[logp] so nothing there can overflow.
        old = torch.where(live, batch.token_fields["old_logp"], logp.detach()) if "old_logp" in batch.token_fields \
            else logp.detach()                                               # [B, T-1]
        adv = batch.fields["adv"].unsqueeze(-1)                              # [B, 1]
        tok, binds = clipped_surrogate(logp, old, adv, c.epsilon, c.epsilon_high)  # [B, T-1] x2
        stats = {"clip_frac": masked_mean(binds, mask), "entropy": masked_mean(batch.entropy.detach(), mask),
                 "ratio": masked_mean(torch.exp(logp.detach() - old), mask)}
        if c.beta > 0:
            ref = torch.where(live, batch.token_fields["ref_logp"], logp.detach())  # [B, T-1]
            kl = KL_ESTIMATORS[c.kl_estimator](logp, ref)                    # [B, T-1]
            tok = tok + c.beta * kl
            stats["kl"] = masked_mean(kl.detach(), mask)
        tok = tok * token_scale(c.loss_type, mask, ctx.world.max_new_tokens)  # [B, T-1]
        return LossOutput(tok, {k: float(v) for k, v in stats.items()})
