"""The one training loop shared by every method.

The engine owns what must be identical across methods -- optimizer (AdamW),
schedule, clipping, gradient accumulation, precision, the step budget, the
evaluation cadence, logging -- and asks the method only for data and per-token
losses. Per-token losses are reduced once per optimizer step (sum over the
step / number of trained tokens, or sequences), so micro-batching never
changes the result -- nor does splitting a step over N data-parallel processes
(each rank trains its strided share of every step against the step's global
denominator, and the gradients are summed over ranks before clipping and AdamW;
with `train.parallel=fsdp` the policy is sharded). Every rank question is asked
in harness/parallel.py, once per step (`Parallel.step`), so `Trainer.update` is
the single-process algorithm in every mode; with one process it is exactly that.
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch

from harness.config import TrainConfig
from harness.cost import Cost
from harness.data import Example, TrainData, collate
from harness.errors import TrainingDiverged
from harness.logprobs import compile_scoring, phi as phi_of, token_logprobs
from harness.method import LossOutput, Method
from harness.parallel import Parallel, full


def lr_lambda(cfg: TrainConfig, horizon: int | None = None) -> Callable[[int], float]:
    """Warm-up then cosine/linear/constant decay over `horizon` steps (default: the run's budget)."""
    total = horizon or cfg.max_steps
    warmup = math.ceil(cfg.warmup_ratio * total)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.schedule == "constant":
            return 1.0
        shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    return f


def precision_context(device: str, precision: str):
    """The autocast of the run's precision: every pass of a run (policy, π_old, reference) uses the same one."""
    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def forward(model: torch.nn.Module, batch, precision: str = "fp32", entropy_grad: bool = False) -> None:
    """Attach the policy's target log-probs (with gradients) and entropies to `batch`, on response positions.

    Entropies carry gradients only with `entropy_grad` (a method whose loss uses them); otherwise they are
    computed without a graph, because the engine logs DDT's φ = log p + H at every step anyway.
    """
    with precision_context(batch.input_ids.device.type, precision):
        batch.logp, batch.entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.targets,
                                                   batch.response_mask, "grad" if entropy_grad else "detached")


@functools.lru_cache(maxsize=None)
def fused_adamw_available(device: str) -> bool:
    """Whether torch has a fused AdamW kernel for `device` (tried on one element: torch checks only at step)."""
    p = torch.zeros(1, device=device, requires_grad=True)
    p.grad = torch.zeros(1, device=device)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except RuntimeError:
        return False
    return True


class Trainer:
    """Optimizer, schedule and the per-step update; `train` is the loop every method runs through."""

    def __init__(self, model: torch.nn.Module, pad_id: int, cfg: TrainConfig, parallel: Parallel | None = None):
        """`parallel`: the run's ranks (default: this process's group under `cfg.parallel`)."""
        self.model, self.pad_id, self.cfg = model, pad_id, cfg
        self.parallel = parallel if parallel is not None else Parallel.of(cfg)
        self.step = 0
        self.cost = Cost()  # the run's one FLOP counter: the sampler and methods report into it too
        self.train_seconds = 0.0
        self.rng = np.random.default_rng(cfg.seed)
        if cfg.gradient_checkpointing:
            # Non-reentrant: works with inputs that need no grad and with the chunked head's own checkpoints.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.compile:
            compile_scoring(model)
        self.parallel.prepare(model)  # rank 0's weights on every rank; sharded under train.parallel=fsdp
        self.reset_optimizer()

    def reset_optimizer(self, horizon: int | None = None, lr: float | None = None) -> None:
        """Fresh AdamW state and a schedule over `horizon` steps (default: the run's budget), peak `lr` (train.lr)."""
        self.parallel.settle(self.model)  # the optimizer must hold the sharded parameters, not a gathered root
        device = next(self.model.parameters()).device
        fused = self.cfg.fused_adamw and fused_adamw_available(str(device))
        if self.cfg.fused_adamw and not fused:
            warnings.warn(f"train.fused_adamw: no fused AdamW kernel on {device}; using the default one", stacklevel=2)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr or self.cfg.lr, betas=self.cfg.betas,
                                     weight_decay=self.cfg.weight_decay, **({"fused": True} if fused else {}))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.cfg, horizon))

    def update(self, examples: list[Example], loss_fn: Callable, ctx, reduction: str = "token",
               entropy_grad: bool = False, kind: str = "train") -> dict[str, float]:
        """One optimizer step over `examples`, split into micro-batches; returns step statistics.

        `entropy_grad`: the loss differentiates the entropies (Method.needs_entropy_grad).
        `kind`: the cost counter's kind of its tokens ("teacher" for a phase outside the evaluated trajectory).
        Every mode runs this one update: under N ranks `step` is this rank's share of the whole step, trained
        against the whole step's denominator and merged over ranks (harness.parallel); the statistics and the cost
        counter are the whole step's on every rank.
        """
        start = time.perf_counter()
        self.model.train()
        if reduction == "token":
            denom = sum(sum(e.train_mask) if e.train_mask is not None else len(e.response_ids) for e in examples)
        else:
            denom = len(examples)
        denom = max(float(denom), 1.0)
        step = self.parallel.step(examples, denom, self.cost, self.step + 1)  # in one process: the whole step
        for chunk in step.micro_batches(self.cfg.micro_batch_size):
            batch = collate(chunk, self.pad_id, self.cfg.device)
            forward(self.model, batch, self.cfg.precision, entropy_grad)
            out: LossOutput = loss_fn(ctx, batch)
            loss = (out.token_loss * batch.loss_mask).sum() / denom
            if not torch.isfinite(loss):
                step.diverge()  # raises TrainingDiverged (under N ranks: on every rank, at the merge)
            if step.backward(loss):  # False for a pass that only keeps sharded ranks in step
                step.add(loss.item(), out.stats, len(chunk), phi_of(batch.logp, batch.entropy)[batch.loss_mask > 0])
                self.cost.add(kind, int(batch.attention_mask.sum()))
        total, stats, n_phi, phi_stats = step.merge(self.model)  # gradients too; the tally itself in one process
        grad_norm = float(full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"non-finite gradient norm at step {self.step + 1}")
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.train_seconds += time.perf_counter() - start
        stats.update({"loss": total, "grad_norm": grad_norm, "lr": lr,
                      "trained_tokens": denom if reduction == "token" else n_phi})
        stats.update(phi_stats)  # DDT's φ of the trained tokens
        return stats

    def train(self, method: Method, ctx, on_step: Callable[[int, dict], None],
              on_eval: Callable[[int], None]) -> None:
        """Ask the method for data until the step budget is spent; evaluate every `eval_every` steps.

        With N processes every rank calls `method.data` identically (same seeds, same weights; each rank samples
        its share of the rollouts and gets all of them, harness.sampler.RankShardedSampler), `on_step` gets the
        whole step's statistics on every rank, and `on_eval` runs on rank 0 only while the others wait.
        """
        phase = 0
        while self.step < self.cfg.max_steps:
            data: TrainData | None = method.data(ctx, phase)
            phase += 1
            self.parallel.same_data(data, f"method.data(phase={phase - 1})")  # every rank computed the same
            if data is None:
                break
            taken = 0
            for examples in data.steps(self.cfg.batch_size, self.rng):
                taken += 1
                stats = self.update(examples, method.loss, ctx, method.reduction, method.needs_entropy_grad)
                self.step += 1
                on_step(self.step, stats)
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps:
                    self.parallel.evaluate(self.model, self.step, lambda: on_eval(self.step))
                if self.step >= self.cfg.max_steps:
                    return
            if taken == 0:
                break  # no usable data (e.g. no verified-correct sample): stop rather than spin
        if self.step and self.step % self.cfg.eval_every != 0:
            # the method stopped early: evaluate where it ended
            self.parallel.evaluate(self.model, self.step, lambda: on_eval(self.step))
