"""Iterative SFT (expert iteration): R rounds of sample -> verify -> SFT, each a slice of the step budget.

Idea: the "iterative SFT" baseline TMS says it beats, in its common forms
(RbD Iterative-SFT, ReST^EM, STaR): regenerate training data from the latest
model every round, keep what the verifier accepts, fine-tune on it.
Data, round r = 0..R-1 (`rounds`): round 0 trains on the model's own verified
samples (`round0_data=self`; the policy is still π_0) or on the world's expert
labels (`round0_data=expert`, SFT's data); every later round samples the
latest model on all training prompts (`samples` per prompt at `temperature`)
and keeps ≤ `keep_per_prompt` per prompt, verifier-correct ones
(`filter=verifier`) or the first ones unfiltered (`filter=none`). With
`restart_from_base=True` (ReST^EM / STaR style) the weights, optimizer and LR
schedule are reset to π_0 after sampling; with False (RbD style, the default,
METHODS.md §3) training continues. Each round takes `max_steps // rounds`
optimizer steps (the last round the remainder), cycling its data as often as
needed, so the total equals the engine's budget for every R.
Loss: SFT's token-mean NLL −(1/N_tok) Σ log π_θ(y_t | x, y_<t).
How it differs from `onpolicy_sft`: there a round is exactly one pass (epoch)
over the freshly sampled data, so the number of rounds follows from budget and
coverage; here a round is a fixed slice of the step budget (a fraction of an
epoch or several), plus the restart, round-0 and filter options.
Papers: TMS (arXiv 2602.03073) baseline, protocol NOT FOUND; ReST^EM (Singh et
al. 2023), STaR (Zelikman et al. 2022), RbD (arXiv 2510.18874).
Deviations: rounds=3, k=4, T=0.8, keep ≤ 1 are GUESSES (config fields). No
STaR rationalization (gold-answer hints) and no growing steps per round.
After a restart the optimizer and schedule restart too, spanning the round's
slice of the budget (a whole warm-up + decay per round, as a fresh run would).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from harness.data import TrainData
from methods._sft_family import SelfSampleConfig, SFTFamily, expert_examples, expert_items, self_examples
from harness.method import SweepParam, register


class IterativeSFTConfig(SelfSampleConfig):
    rounds: int = Field(3, ge=1)
    """Sample -> verify -> SFT rounds R, each `max_steps // R` steps (GUESS: 3, ReST^EM/STaR-style 3-4)."""
    restart_from_base: bool = False
    """Reset weights, optimizer and schedule to π_0 each round after sampling (ReST^EM/STaR); False continues (RbD)."""
    round0_data: Literal["self", "expert"] = "self"
    """Round 0's data: the base's own verified samples, or the world's expert labels (SFT's data)."""
    filter: Literal["verifier", "none"] = "verifier"
    """Keep only verifier-correct samples (and verifier-accepted expert labels), or keep samples unfiltered."""


@register
class IterativeSFT(SFTFamily):
    name = "iterative_sft"
    description = "R rounds of sample-verify-SFT from the latest model, each a slice of the step budget"
    paper = "TMS arXiv 2602.03073 (iterative-SFT baseline); ReST^EM arXiv 2312.06585; STaR arXiv 2203.14465"
    order = 2
    Config = IterativeSFTConfig
    smoke = {"samples": 8}
    sweep = {"train.lr": SweepParam(1e-5, 3e-4),
             "iterative_sft.rounds": SweepParam(choices=(2, 3, 4)),
             "iterative_sft.restart_from_base": SweepParam(choices=(False, True))}

    def round_steps(self, max_steps: int, r: int) -> int:
        """Optimizer steps of round r: max_steps // R, the last round the remainder (≥ 1)."""
        per = max(1, max_steps // self.cfg.rounds)
        return per if r < self.cfg.rounds - 1 else max(1, max_steps - per * (self.cfg.rounds - 1))

    def data(self, ctx, phase: int) -> TrainData | None:
        if phase >= self.cfg.rounds:
            return None
        verify = self.cfg.filter == "verifier"
        if phase == 0 and self.cfg.round0_data == "expert":
            examples = expert_examples(ctx, expert_items(ctx, verify))
            ctx.log({"kept": float(len(examples)), "round": 0.0})
        else:
            examples = self_examples(ctx, self.cfg, verify=verify, round=float(phase))  # latest model
        steps = self.round_steps(ctx.max_steps, phase)
        if phase > 0 and self.cfg.restart_from_base:
            ctx.reset_to_base(horizon=steps)  # each restarted round gets a whole warm-up + decay
        per_pass = math.ceil(len(examples) / ctx.run_cfg.train.batch_size)
        passes = math.ceil(steps / per_pass) if per_pass else 1
        return TrainData(examples, passes=passes, max_steps=steps)
