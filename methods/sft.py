"""SFT: supervised fine-tuning on static (off-policy) expert labels.

Idea: imitate a teacher's solutions with teacher-forced maximum likelihood.
Data: the world's expert labels for the target's training prompts, in the
world's teacher style (`world.teacher_style`); by default only those the
verifier accepts (`filter_labels`, shared with IDFT and TMS, as RbD's loaders
drop incorrect teacher responses).
Loss: token-mean NLL −(1/N_tok) Σ log π_θ(y_t | x, y_<t) over the optimizer
step's response tokens (the engine reduces), plus an optional k2 penalty to
the base, β·½(log π_θ − log π_0)² per token (off by default, `kl_beta=0`).
Paper: the SFT baseline of Retaining by Doing (arXiv 2510.18874),
`core/training/objectives.py::CrossEntropyLoss`.
Deviations: RbD averages the k2 penalty per sequence then over the batch; here
it is averaged per token like the NLL, so one reduction serves both terms.
The number of epochs is not a setting: SFT cycles its labels until the
engine's step budget (`train.max_steps`) is spent, like every method.
"""
from __future__ import annotations

from pydantic import Field

from harness.data import TrainData
from harness.method import LossOutput, Method, SweepParam, register
from methods._sft_family import ExpertLabelConfig, expert_examples, expert_items, nll_loss
from methods.common import k2, masked_mean, reference_logp


class SFTConfig(ExpertLabelConfig):
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the per-token k2 penalty to the base (0 disables it and the base copy)."""


@register
class SFT(Method):
    name = "sft"
    description = "supervised fine-tuning on static expert labels (off-policy)"
    paper = "Retaining by Doing, arXiv 2510.18874 (SFT baseline)"
    order = 0
    Config = SFTConfig
    # Toy-calibrated: on labels 9 nats/token off-policy SFT learns the new format within 100 steps only
    # from ~3e-4 up (measured); real worlds set their range with the sweep spec's `space`.
    sweep = {"train.lr": SweepParam(1e-4, 1e-3)}

    def data(self, ctx, phase: int) -> TrainData:
        if not hasattr(self, "_examples"):
            self._examples = expert_examples(ctx, expert_items(ctx, self.cfg.filter_labels))
        return TrainData(self._examples)

    def loss(self, ctx, batch) -> LossOutput:
        out = nll_loss(batch.logp, batch.loss_mask)                         # token_loss [B, T-1]
        if self.cfg.kl_beta > 0:
            pen = k2(batch.logp, reference_logp(ctx.base, batch, ctx.run_cfg.train.precision))  # [B, T-1]
            ctx.cost.forward("ref", batch.examples)
            out.stats["kl_k2"] = float(masked_mean(pen.detach(), batch.loss_mask))
            out.token_loss = out.token_loss + self.cfg.kl_beta * pen
        return out
