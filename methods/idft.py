"""IDFT: SFT re-weighted token by token by how in-distribution each label token is (+ optional Hinted Decoding data).

Idea: an off-policy label token the model finds surprising (very negative
centred log-likelihood φ_t = log p_t + H_t, which has mean 0 on the model's
own samples) should move the model less than one it already finds typical.
Loss (METHODS.md §6b, from `IDFT/verl/trainer/fsdp_polylog_trainer.py`):
    γ_raw = clip(exp(−φ_t/β), γ_min, γ_max),   γ_t = 1 + λ(s)(γ_raw − 1),
    ℓ_t = − sg[p_t^γ_t] · log p_t   (p_t clamped to [1e-10, 1]; φ, γ without gradient),
token-mean over the step's response tokens (the engine reduces). γ→0 is SFT,
γ=1 is DFT (weight p), γ=2 (very OOD token) weight p². λ(s) ramps from 0 to 1
between progress s = w and w + τ (s = step / max_steps).
Data: `data=expert` (default): the world's expert labels, as SFT (by default
only verifier-accepted ones: `filter_labels`, shared with SFT and TMS).
`data=hinted`: Hinted Decoding (§6c, `methods/_hinted.py`), built once at the
first call: the policy's own verified answers are kept as they are; for the
prompts it fails, lock-step decoding with a hint holding the expert label
steers it to its own version of the solution; verified outputs are kept (the
paper's HD+IDFT).
Paper: Zhang et al., "Towards On-Policy SFT", arXiv 2602.12222.
Deviations: w = τ = 0 by default (λ ≡ 1), as in the launched run script; the
repo's config defaults are w = 0.2, τ = 0.1. The released trainer detaches the
whole weight, −sg[p^γ]·log p (commit eb0f3e7 fixed the initial commit e33b89c,
which detached only γ), as do METHODS.md and the paper: that is our default.
`detach_weight=false` keeps e33b89c's form for comparison: its gradient
−p^γ(1 + γ log p)∇log p pushes tokens with p < e^(−1/γ) further down. HD: the
toy hint is a context prefix (`hint_template`), not a chat instruction plus
first-pass analysis; own answers are sampled once at `hd_temperature` (GUESS);
the paper's HD β is NOT FOUND (0.7 is the function default); HD is batched.
Measured on toy: the default base never saw a prefix before a prompt, so the
hint derails it and HD accepts ~0 outputs (0/712) -- `data=hinted` there trains
on the own verified answers alone. A base with 10% of its target pretraining
sequences hinted (`world.pretrain.hint_frac=0.1`, sweeps/hinted-idft.yaml)
reads the hint: HD accepted 1995/1995 of the prompts it failed (3 seeds; mean
φ of HD's outputs −0.17 vs −9.3 for the expert labels), and HD+IDFT's drop at
matched gain is 0.0 [−0.5, 0.5] vs SFT's 13.9 [9.9, 18.0] (README, Notes).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from harness.data import TrainData
from harness.logprobs import phi as phi_of
from methods._hinted import hinted_examples
from methods._sft_family import ExpertLabelConfig, expert_examples, expert_items
from harness.method import LossOutput, Method, SweepParam, register
from methods.common import masked_mean


class IDFTConfig(ExpertLabelConfig):
    beta: float = Field(1.0, gt=0)
    """Temperature β of γ_raw = exp(−φ/β) (repo default 1.0)."""
    gamma_min: float = Field(0.1, ge=0)
    """Lower clip of γ (repo default 0.1)."""
    gamma_max: float = Field(2.0, gt=0)
    """Upper clip of γ (repo default 2.0)."""
    warmup: float = Field(0.0, ge=0, le=1)
    """w: progress before which λ = 0, i.e. DFT (launched run 0; repo config default 0.2)."""
    ramp: float = Field(0.0, ge=0, le=1)
    """τ: progress over which λ ramps 0 → 1 after w (launched run 0; repo config default 0.1)."""
    detach_weight: bool = True
    """Stop the gradient of p^γ (the paper's and the released trainer's form); false = e33b89c's undetached p^γ."""
    data: Literal["expert", "hinted"] = "expert"
    """Training data: the expert labels (`filter_labels` applies), or Hinted Decoding's re-aligned data (HD+IDFT)."""
    hint_template: str = "{label}:{prompt}"
    """Hinted context (fields {label}, {answer}, {prompt}); the toy model reads no instructions (GUESS)."""
    hd_beta: float = Field(0.7, ge=0)
    """HD mixing slope: λ = clip(β·H(p)/log|V|, 0, 1) (function default 0.7; paper's value NOT FOUND)."""
    hd_temperature: float = Field(0.3, ge=0)
    """Sampling temperature of HD and of the own-answer pass (demo 0.3; own pass GUESS; 0 = greedy)."""
    hd_top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus mass of HD and of the own-answer pass (demo 0.95)."""
    hd_delimiter: str = "|"
    """Final-answer delimiter after which HD follows the plain stream only (demo: `\\boxed{`)."""
    hd_batch_size: int = Field(512, ge=1)
    """Prompts decoded together in HD."""

    @model_validator(mode="after")
    def _gamma_range(self) -> "IDFTConfig":
        if self.gamma_min > self.gamma_max:
            raise ValueError(f"gamma_min={self.gamma_min} exceeds gamma_max={self.gamma_max}")
        return self


def lambda_schedule(s: float, warmup: float, ramp: float) -> float:
    """λ(s): 0 before w, (s − w)/τ on the ramp, 1 afterwards (s = training progress in [0, 1])."""
    if s < warmup:
        return 0.0
    if s < warmup + ramp:
        return (s - warmup) / ramp
    return 1.0


def idft_token_loss(logp: torch.Tensor, entropy: torch.Tensor, lam: float, beta: float, gmin: float, gmax: float,
                    mask: torch.Tensor | None = None, detach_weight: bool = True) -> tuple[torch.Tensor, dict]:
    """Per-token IDFT loss −sg[p^γ] log p [B, T-1] and detached means (over `mask`) of γ, weight p^γ, φ, NLL.

    logp, entropy: [B, T-1] from the engine's forward pass (with gradients; φ and γ are detached here).
    """
    mask = torch.ones_like(logp) if mask is None else mask
    phi = phi_of(logp, entropy)                                               # [B, T-1] centred log-likelihood
    gamma_raw = torch.exp(-phi / beta).clamp(gmin, gmax)                      # [B, T-1]
    gamma = 1.0 + lam * (gamma_raw - 1.0)                                     # [B, T-1]
    p = logp.exp().clamp(1e-10, 1.0)                                          # [B, T-1] (grad flows inside the clamp)
    weight = p.detach() ** gamma if detach_weight else p ** gamma             # [B, T-1]
    loss = -weight * torch.log(p)                                             # [B, T-1]
    stats = {"gamma": float(masked_mean(gamma, mask)), "weight": float(masked_mean(weight.detach(), mask)),
             "phi": float(masked_mean(phi, mask)), "nll": float(masked_mean(-logp.detach(), mask)), "lambda": lam}
    return loss, stats


@register
class IDFT(Method):
    name = "idft"
    description = "SFT with in-distribution token weights p^γ(φ) (IDFT), optionally on Hinted Decoding data"
    paper = "Towards On-Policy SFT, arXiv 2602.12222 (IDFT, Hinted Decoding)"
    order = 5
    Config = IDFTConfig
    sweep = {"train.lr": SweepParam(1e-4, 1e-3)}

    def data(self, ctx, phase: int) -> TrainData:
        if not hasattr(self, "_examples"):
            if self.cfg.data == "hinted":
                self._examples = hinted_examples(ctx, self.cfg)
            else:
                self._examples = expert_examples(ctx, expert_items(ctx, self.cfg.filter_labels))
        return TrainData(self._examples)

    def loss(self, ctx, batch) -> LossOutput:
        lam = lambda_schedule(ctx.step / max(1, ctx.max_steps), self.cfg.warmup, self.cfg.ramp)
        loss, stats = idft_token_loss(batch.logp, batch.entropy, lam, self.cfg.beta, self.cfg.gamma_min,
                                      self.cfg.gamma_max, batch.loss_mask, self.cfg.detach_weight)
        return LossOutput(loss, stats)
