"""Per-epoch on-policy SFT: SFT on the current model's verified samples, regenerated every epoch.

Idea: keep SFT's data approximately on-policy as θ moves -- Self-SFT is
on-policy only at t=0; regenerating at every epoch tracks the policy at the
cost of one sampling pass per epoch (far less than per-step RL generation).
Data: at the start of every epoch (every `data()` call) sample the *current*
policy π_θe on all training prompts (`samples` per prompt at `temperature`),
keep verifier-correct, finished samples (≤ `keep_per_prompt` per prompt; prompts
with none dropped), shuffle, and train one pass over them. Coverage is logged
per epoch (`coverage`, `kept`, `epoch`). Optimizer state and LR schedule
continue across epochs (the engine's default; nothing is reset).
Loss: SFT's token-mean NLL −(1/N_tok) Σ log π_θ(y_t | x, y_<t).
Paper: Iterative-SFT ("approximately on-policy data") of Retaining by Doing
(arXiv 2510.18874); METHODS.md §4.
Deviations: samples per prompt and temperature are NOT FOUND in RbD; the same
GUESSES as Self-SFT (k=4, T=0.8, keep ≤ 1; config fields). Continuing the
optimizer and schedule across epochs is a GUESS. The number of epochs is not
a setting: epochs follow until the engine's step budget is spent (an epoch's
length is its kept examples / batch size, so it shrinks when coverage falls);
if an epoch keeps no sample the run ends there. `prompts_per_epoch` = P makes
an epoch a pass over the next P training prompts (consecutive slices, wrapping
round; a slice with no correct sample is skipped for the next, and the run ends
only if a whole pass keeps none), as if P prompts were drawn afresh each epoch: the
policy is then resampled every ~P / batch size steps (sweeps/default.yaml sets
32: every 2 steps, so the arm differs from Self-SFT long before either reaches
the matched gain).
"""
from __future__ import annotations

import math

from pydantic import Field

from harness.data import TrainData
from methods._sft_family import SelfSampleConfig, SFTFamily, self_examples
from harness.method import SweepParam, register


class OnPolicySFTConfig(SelfSampleConfig):
    """Per-epoch on-policy SFT's settings: how the current policy is sampled each epoch."""

    prompts_per_epoch: int | None = Field(None, ge=1)
    """Training prompts sampled (and trained on) per epoch, the next ones in order, wrapping round; None: all of
    them (RbD's epoch). A smaller P resamples the policy every ~P / batch size optimizer steps."""


@register
class OnPolicySFT(SFTFamily):
    name = "onpolicy_sft"
    description = "SFT on the current model's verified samples, regenerated at the start of every epoch"
    paper = "Retaining by Doing, arXiv 2510.18874 (Iterative-SFT, per-epoch on-policy data)"
    order = 3
    Config = OnPolicySFTConfig
    smoke = {"samples": 8}
    sweep = {"train.lr": SweepParam(1e-5, 3e-4),
             "onpolicy_sft.temperature": SweepParam(0.5, 1.2, log=False)}

    def data(self, ctx, phase: int) -> TrainData:
        # `phase` counts data() calls = epochs; the sampler is bound to the live policy.
        items, p = ctx.world.train_items, self.cfg.prompts_per_epoch
        if p is None or p >= len(items):
            return TrainData(self_examples(ctx, self.cfg, epoch=float(phase)))
        examples = []
        for _ in range(math.ceil(len(items) / p)):  # a slice without a correct sample: the next, up to a whole pass
            start = getattr(self, "_cursor", 0)
            self._cursor = (start + p) % len(items)
            examples = self_examples(ctx, self.cfg, items=(items[start:] + items[:start])[:p], epoch=float(phase))
            if examples:
                break
        return TrainData(examples)
