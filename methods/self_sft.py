"""Self-SFT: supervised fine-tuning on the base model's own verified samples.

Idea: make SFT's data on-policy at t=0 -- imitate what the initial model π_0
already does when it is right, instead of a teacher's off-policy labels.
Data: sampled once, before the first optimizer step, from π_0 on the target's
training prompts (`samples` per prompt at `temperature`); only verifier-correct,
finished samples are kept, at most `keep_per_prompt` per prompt; prompts with
none are dropped. The coverage (fraction of prompts with a correct sample) is
logged, since it bounds what the method can learn. The set is cached, so every
epoch (each later `data()` call) trains on the same examples.
Loss: SFT's token-mean NLL −(1/N_tok) Σ log π_θ(y_t | x, y_<t) (the engine
reduces per optimizer step).
Paper: Self-SFT of Retaining by Doing (arXiv 2510.18874), whose loaders read
pre-generated `data/self-sft/<model>/<task>.jsonl` and skip `correct == False`.
Deviations: RbD's samples per prompt and temperature are not published; here
k=4 at T=0.8 keeping ≤ 1 correct per prompt (GUESSES, METHODS.md §2, all config
fields). Samples cut off at `max_new_tokens` count as incorrect. Like every
method, training runs for the engine's step budget rather than RbD's 2 epochs.
"""
from __future__ import annotations

from harness.data import TrainData
from methods._sft_family import SelfSampleConfig, SFTFamily, self_examples
from harness.method import SweepParam, register


class SelfSFTConfig(SelfSampleConfig):
    """Self-SFT's settings: only how the base is sampled (`samples`, `temperature`, `keep_per_prompt`)."""


@register
class SelfSFT(SFTFamily):
    name = "self_sft"
    description = "SFT on the base model's own verified samples, drawn once before training"
    paper = "Retaining by Doing, arXiv 2510.18874 (Self-SFT)"
    order = 1
    Config = SelfSFTConfig
    smoke = {"samples": 8}
    sweep = {"train.lr": SweepParam(1e-5, 3e-4),
             "self_sft.temperature": SweepParam(0.5, 1.2, log=False)}

    def data(self, ctx, phase: int) -> TrainData:
        if not hasattr(self, "_examples"):
            # Before the first update the policy *is* π_0; afterwards only the frozen base copy is.
            sampler = None if ctx.step == 0 else ctx.sampler_for(ctx.base_path, lambda: ctx.base)
            self._examples = self_examples(ctx, self.cfg, sampler=sampler)
        return TrainData(self._examples)
