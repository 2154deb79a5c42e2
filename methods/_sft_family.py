"""Pieces shared by the SFT family (private module).

`self_sft`, `onpolicy_sft` and `iterative_sft` differ only in *when* and *from
which weights* they sample; their loss is SFT's token-mean NLL (`nll_loss`,
which `methods/sft.py` can use too) and their sampling settings are the same
typed fields (`SelfSampleConfig`), so the three cannot drift apart. Likewise
`sft`, `idft` and `tms` read the world's expert labels through one setting
(`ExpertLabelConfig.filter_labels`), so all three train on the same label set.
"""
from __future__ import annotations

import torch
from pydantic import Field

from harness.data import Example
from harness.errors import HarnessError
from harness.method import LossOutput, Method, MethodConfig
from methods.common import Sampled, correct_examples, coverage, masked_mean, sample_and_verify


class ExpertLabelConfig(MethodConfig):
    """The expert-label setting shared by the methods trained on the world's labels (SFT, IDFT, TMS)."""

    filter_labels: bool = True
    """Keep only expert labels (and their prompts) the verifier accepts, as RbD's loaders drop incorrect teacher
    responses; false keeps every label (TMS's verifier-free setting)."""


def expert_items(ctx, filter_labels: bool) -> list:
    """The target's training items, only those whose expert label the verifier accepts when `filter_labels`."""
    items = ctx.world.train_items
    if not filter_labels:
        return list(items)
    kept = [it for it in items if ctx.world.verify(it, it.label) > 0]
    if items and not kept:
        raise HarnessError(f"none of the {len(items)} expert labels passes the verifier; check the world's labels "
                           f"or set <method>.filter_labels=false")
    return kept


def expert_examples(ctx, items: list) -> list[Example]:
    """One training example per item: its prompt and expert label (plus the end token)."""
    return [ctx.example(it.prompt, it.label, task=it.task, source="expert") for it in items]


def nll_loss(logp: torch.Tensor, loss_mask: torch.Tensor) -> LossOutput:
    """Per-token NLL −log π_θ(y_t | x, y_<t); the engine's token reduction makes it SFT's token mean.

    logp, loss_mask: [B, T-1] (target coordinates). Stats: the masked mean NLL (detached).
    """
    nll = -logp                                                               # [B, T-1]
    return LossOutput(nll, {"nll": float(masked_mean(nll.detach(), loss_mask))})


class SelfSampleConfig(MethodConfig):
    """How the model's own training data is sampled (values NOT FOUND in RbD: METHODS.md §2 GUESS)."""

    samples: int = Field(4, ge=1)
    """Samples per training prompt (GUESS: 4)."""
    temperature: float = Field(0.8, gt=0)
    """Sampling temperature (GUESS: 0.8, RbD's RL sampling temperature)."""
    keep_per_prompt: int = Field(1, ge=1)
    """Verified-correct samples kept per prompt, first ones first (GUESS: 1, so the set is SFT-sized)."""


def self_examples(ctx, cfg: SelfSampleConfig, sampler=None, verify: bool = True, items: list | None = None,
                  **log_extra: float) -> list[Example]:
    """Sample the target's training prompts, keep ≤ `keep_per_prompt` per prompt, log coverage.

    sampler: the generator (None: the current policy through `ctx.sampler`).
    items: the prompts to sample (None: all the target's training items).
    verify: keep only verifier-correct, finished samples; False keeps the first samples unfiltered.
    Logs `coverage` (fraction of prompts with ≥ 1 correct sample, always measured), `kept`, and `log_extra`.
    """
    items = ctx.world.train_items if items is None else items
    sampled = sample_and_verify(ctx, items, cfg.samples, cfg.temperature, sampler=sampler)
    cov = coverage(sampled)
    if not verify:  # every sample counts as kept (reward-free variant)
        sampled = [Sampled(s.item, s.completions, [1.0] * len(s.completions)) for s in sampled]
    examples = correct_examples(ctx, sampled, per_prompt=cfg.keep_per_prompt, source="self")
    ctx.log({"coverage": cov, "kept": float(len(examples)), **log_extra})
    return examples


class SFTFamily(Method):
    """Base of the self-data SFT methods: SFT's token-mean NLL loss."""

    reduction = "token"

    def loss(self, ctx, batch) -> LossOutput:
        return nll_loss(batch.logp, batch.loss_mask)
