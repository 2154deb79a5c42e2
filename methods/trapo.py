"""TRAPO: trust-region SFT on expert prefixes plus RL on the model's own continuations, with adaptive guidance.

Idea: per prompt, give the model as much of an expert solution as it needs
(none while it succeeds, longer prefixes as it fails); learn TrSFT on expert
prefix tokens and group-relative policy gradient on its own tokens.
Data: each data() call draws `prompts_per_step` prompts and samples, per
prompt, four sequential micro-groups of sizes (4, 2, 1, 1). With S_k the
cumulative successes after micro-group k: stage 2 continues a 25% expert
prefix if S_1 < 2, stage 3 a 50% prefix if S_2 < 4, stage 4 is the FULL
expert trajectory (no model tokens, verifier-scored) if S_3 < 7, each stage
otherwise unguided. Cuts (`prefix_end`): just after the first break token
past ⌊ρL⌋ if it lies before (ρ+0.3)L, else at ⌊ρL⌋. The 8 samples form one
group with advantage A = r − mean(r) (no std). TrSFT applies to the prefix of
the second 25% rollout only (the shared prefix counts once) and to the single
rollout at 50% and 100%. One optimizer step per data() call.
Loss per token: −p/max(sg[p], α) on TrSFT-masked prefix tokens (α = 0.1; the
gradient is −∇log p inside the trust region p ≥ α, −(p/α)∇log p outside),
−A·π_θ/sg[π_θ] (ratio ≡ 1, no clip) on model tokens, −0.001·H_t on every
response token; each token divided by L_max = world.max_new_tokens and the
engine averages sequences ("sequence" reduction). No KL, no reference model.
Paper: Su et al., TRAPO, arXiv 2512.17636 (code: Su-my/TRAPO, see METHODS.md §7).
Deviations: normaliser L_max × sequences (code: L_max × micro-batches, a
constant factor); the entropy bonus shares it (code: a token mean). Expert
trajectory = label + end token; the toy teacher is deterministic, so the
"two expert solutions" are one label. Break tokens contain a `break_strings`
entry: "," (the worked style's step separator) for the paper's "\\n\\n"
[GUESS]. Truncated samples score 0; LR is swept, not 1e-6.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field

from harness.data import Example, TrainData
from methods._policy_gradient import draw_items, group_stats
from methods._trapo_prefix import MICRO_GROUPS, guidance, prefix_end
from harness.method import LossOutput, Method, MethodConfig, SweepParam, register
from methods.common import group_advantages, masked_mean, sample_and_verify


class Sample(NamedTuple):
    """One of a prompt's 8 samples: response = expert prefix (n_prefix tokens) + the model's continuation."""
    prompt: list[int]
    response: list[int]
    n_prefix: int
    trsft: bool  # whether its prefix carries the TrSFT loss
    reward: float


def trsft_loss(logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-token TrSFT loss −p / max(sg[p], α); logp: [B, T-1] -> [B, T-1]."""
    p = logp.exp()                                                      # [B, T-1]
    return -p / p.detach().clamp(min=alpha)                             # [B, T-1]


class TRAPOConfig(MethodConfig):
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per optimizer step (8 samples each: 8 x 8 = 64 sequences, as released)."""
    temperature: float = Field(1.0, gt=0)
    """Rollout temperature."""
    alpha: float = Field(0.1, gt=0, le=1)
    """TrSFT trust-region floor α (hard-coded 0.1 in the code)."""
    entropy_coef: float = Field(0.001, ge=0)
    """Entropy bonus coefficient (subtracted from the loss)."""
    break_strings: list[str] = Field(default_factory=lambda: [","])
    """A token is a paragraph break if its text contains one of these [GUESS: the toy teacher's step separator]."""


@register
class TRAPO(Method):
    name = "trapo"
    rewarded = True
    description = "trust-region SFT on adaptive expert prefixes + group-relative RL on continuations"
    paper = "TRAPO, Su et al., arXiv 2512.17636 (ICLR 2026)"
    order = 6
    Config = TRAPOConfig
    smoke = {"prompts_per_step": 4}
    sweep = {"train.lr": SweepParam(1e-5, 3e-4)}
    reduction = "sequence"
    needs_entropy_grad = True  # the entropy bonus −entropy_coef·H is part of the loss

    def data(self, ctx, phase: int) -> TrainData:
        c, tok = self.cfg, ctx.tokenizer
        items = draw_items(ctx, c.prompts_per_step)
        experts = [ctx.encode(it.label) for it in items]   # expert trajectories (+ eos when used whole)
        is_break = lambda t: any(b in tok.decode([t]) for b in c.break_strings)  # noqa: E731
        rows: list[list[Sample]] = [[] for _ in items]
        levels = {0.25: 0, 0.5: 0, 1.0: 0}
        for stage, (size, _, _) in enumerate(MICRO_GROUPS):
            todo = []
            for i, row in enumerate(rows):
                rho = guidance(stage, int(sum(x.reward for x in row)))
                if rho > 0:
                    levels[rho] += 1
                if rho >= 1:  # the full expert trajectory: no model tokens
                    resp = experts[i] + [tok.eos_token_id]
                    row.append(Sample(ctx.encode(items[i].prompt), resp, len(resp), True,
                                      ctx.world.verify(items[i], items[i].label)))
                else:
                    todo.append((i, prefix_end(experts[i], rho, is_break) if rho > 0 else 0))
            if not todo:
                continue
            outs = sample_and_verify(ctx, [items[i] for i, _ in todo], size, c.temperature,
                                     prefix_ids=[experts[i][:k] for i, k in todo])
            for (i, _), s in zip(todo, outs):
                P = len(ctx.encode(items[i].prompt))
                for j, (comp, r) in enumerate(zip(s.completions, s.rewards)):
                    # The prefix tokens actually generated from; only the last rollout of a stage carries TrSFT.
                    rows[i].append(Sample(comp.prompt_ids[:P], comp.prompt_ids[P:] + comp.response_ids,
                                          len(comp.prompt_ids) - P, j == size - 1, r))
        rewards = torch.tensor([[x.reward for x in row] for row in rows])  # [P, 8]
        adv = group_advantages(rewards, scale=False)                        # [P, 8]
        examples, flat = [], [x for row in rows for x in row]
        for x, a in zip(flat, adv.flatten().tolist()):
            pre = [1.0] * x.n_prefix + [0.0] * (len(x.response) - x.n_prefix)
            source = "expert" if x.n_prefix == len(x.response) else "prefixed" if x.n_prefix else "self"
            examples.append(Example(x.prompt, x.response, task=ctx.world.target, source=source, fields={"adv": a},
                                    token_fields={"prefix": pre, "trsft": pre if x.trsft else [0.0] * len(pre)}))
        expert_r = [x.reward for x in flat if x.n_prefix == len(x.response)]
        stats = {**group_stats(rewards), "reward_unguided": float(rewards[:, :4].mean()),
                 "prefix_ratio": sum(x.n_prefix for x in flat) / sum(len(x.response) for x in flat),
                 "n_prefix25": levels[0.25], "n_prefix50": levels[0.5], "n_full_expert": levels[1.0]}
        ctx.log(stats | ({"expert_reward": sum(expert_r) / len(expert_r)} if expert_r else {}))
        return TrainData(examples, batch_size=len(examples), shuffle=False)

    def loss(self, ctx, batch) -> LossOutput:
        c, mask, logp = self.cfg, batch.loss_mask, batch.logp             # [B, T-1]
        prefix, sft = batch.token_fields["prefix"], batch.token_fields["trsft"]  # [B, T-1] each
        adv = batch.fields["adv"].unsqueeze(-1)                           # [B, 1]
        rl = -adv * torch.exp(logp - logp.detach())                       # [B, T-1]; value −A, gradient −A∇log p
        tok = trsft_loss(logp, c.alpha) * sft + rl * (1 - prefix) - c.entropy_coef * batch.entropy  # [B, T-1]
        p = logp.detach().exp()
        stats = {"entropy": masked_mean(batch.entropy.detach(), mask), "expert_p": masked_mean(p, sft * mask),
                 "trust_frac": masked_mean((p >= c.alpha).float(), sft * mask)}
        return LossOutput(tok / ctx.world.max_new_tokens, {k: float(v) for k, v in stats.items()})
