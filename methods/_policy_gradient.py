"""Policy-gradient pieces shared by GRPO and TRAPO: prompt draws, the clipped surrogate, loss aggregation.

Group advantages, k2/k3 and masked_mean live in `methods.common`; this module
holds only what the two RL methods share beyond those.
"""
from __future__ import annotations

import torch

from methods.common import k2, k3

# loss_type -> the engine's reduction. The engine divides the step's summed loss by the number of
# trained tokens ("token") or of sequences ("sequence"); `token_scale` supplies the per-sequence factor.
LOSS_REDUCTION = {"grpo": "sequence", "dr_grpo": "sequence", "bnpo": "token", "dapo": "token"}
KL_ESTIMATORS = {"k2": k2, "k3": k3}


def draw_items(ctx, n: int) -> list:
    """`n` distinct training prompts of the target task, drawn with the run's seeded generator."""
    items = ctx.world.train_items
    idx = ctx.rng.choice(len(items), size=min(n, len(items)), replace=False)
    return [items[int(i)] for i in idx]


def token_scale(loss_type: str, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Per-sequence factor [B, 1] applied to every token's loss before the engine's reduction.

    grpo: 1/|o_i| (token mean per sequence; the engine then averages sequences);
    dr_grpo: 1/max_len (sum per sequence over a constant; then the sequence mean);
    bnpo, dapo: 1 (the engine divides by all trained tokens of the optimizer step).
    mask: [B, T-1] trained-token mask.
    """
    B = mask.shape[0]
    if loss_type == "grpo":
        return 1.0 / mask.sum(-1, keepdim=True).clamp(min=1)          # [B, 1]
    if loss_type == "dr_grpo":
        return mask.new_full((B, 1), 1.0 / max_len)                     # [B, 1]
    if loss_type in ("bnpo", "dapo"):
        return mask.new_ones((B, 1))                                    # [B, 1]
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_REDUCTION)}")


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped surrogate −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per token, and where the clip binds.

    logp, old_logp: [B, T-1]; adv: [B, 1] (or [B, T-1]). Returns (loss [B, T-1], clipped [B, T-1] in {0,1}).
    """
    ratio = torch.exp(logp - old_logp)                                  # [B, T-1]
    unclipped = ratio * adv                                             # [B, T-1]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv       # [B, T-1]
    loss = -torch.minimum(unclipped, clipped)                           # [B, T-1]
    # The clip binds (zero gradient) when the ratio left the region in the direction the advantage pushes.
    binds = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, binds.float()


def group_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Reward mean and the fraction of groups with mixed rewards (the only ones with a learning signal).

    rewards: [P, G].
    """
    mixed = (rewards.max(-1).values > rewards.min(-1).values).float()  # [P]
    return {"reward_mean": float(rewards.mean()), "mixed_group_frac": float(mixed.mean())}
