"""The one training loop shared by every method.

The engine owns what must be identical across methods -- optimizer (AdamW),
schedule, clipping, gradient accumulation, precision, the step budget, the
evaluation cadence, logging -- and asks the method only for data and per-token
losses. Per-token losses are reduced once per optimizer step (sum over the
step / number of trained tokens, or sequences), so micro-batching never
changes the result.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch

from harness.config import TrainConfig
from harness.data import Example, TrainData, collate
from harness.errors import TrainingDiverged
from methods.base import LossOutput, Method

PHI_THRESHOLDS = (1, 3, 5)


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


def forward(model: torch.nn.Module, batch, precision: str = "fp32") -> None:
    """Run the policy on a batch and attach logits, target log-probs and entropies (with gradients)."""
    autocast = torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with autocast:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)                      # [B, T-1, V]
    batch.logits = logits
    batch.logp = logprobs.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    batch.entropy = -(logprobs.exp() * logprobs).sum(-1)                      # [B, T-1]


class Trainer:
    """Optimizer, schedule and the per-step update; `train` is the loop every method runs through."""

    def __init__(self, model: torch.nn.Module, pad_id: int, cfg: TrainConfig):
        self.model, self.pad_id, self.cfg = model, pad_id, cfg
        self.step = 0
        self.train_tokens = 0
        self.train_seconds = 0.0
        self.rng = np.random.default_rng(cfg.seed)
        self.reset_optimizer()

    def reset_optimizer(self, horizon: int | None = None) -> None:
        """Fresh AdamW state and a schedule over `horizon` steps (default: the run's budget)."""
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas,
                                     weight_decay=self.cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.cfg, horizon))

    def update(self, examples: list[Example], loss_fn: Callable, ctx, reduction: str = "token") -> dict[str, float]:
        """One optimizer step over `examples`, split into micro-batches; returns step statistics."""
        start = time.perf_counter()
        self.model.train()
        if reduction == "token":
            denom = sum(sum(e.train_mask) if e.train_mask is not None else len(e.response_ids) for e in examples)
        else:
            denom = len(examples)
        denom = max(float(denom), 1.0)
        total, stats, phis = 0.0, {}, []
        chunks = [examples[i:i + self.cfg.micro_batch_size] for i in range(0, len(examples), self.cfg.micro_batch_size)]
        for chunk in chunks:
            batch = collate(chunk, self.pad_id, self.cfg.device)
            forward(self.model, batch, self.cfg.precision)
            out: LossOutput = loss_fn(ctx, batch)
            loss = (out.token_loss * batch.loss_mask).sum() / denom
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"non-finite loss at step {self.step + 1}")
            loss.backward()
            total += loss.item()
            for k, v in out.stats.items():
                stats[k] = stats.get(k, 0.0) + float(v) * len(chunk) / len(examples)
            mask = batch.loss_mask > 0
            phis.append((batch.logp.detach() + batch.entropy.detach())[mask])
            self.train_tokens += int(batch.attention_mask.sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"non-finite gradient norm at step {self.step + 1}")
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.train_seconds += time.perf_counter() - start
        phi = torch.cat(phis) if phis else torch.zeros(0)
        stats.update({"loss": total, "grad_norm": grad_norm, "lr": lr, "trained_tokens": denom if reduction == "token" else float(phi.numel())})
        if phi.numel():
            # DDT's centred log-likelihood of the trained tokens: ~0 on the model's own samples, << 0 off-policy.
            stats["data_phi"] = float(phi.mean())
            for t in PHI_THRESHOLDS:
                stats[f"data_phi_lt{t}"] = float((phi < -t).float().mean())
        return stats

    def train(self, method: Method, ctx, on_step: Callable[[int, dict], None],
              on_eval: Callable[[int], None]) -> None:
        """Ask the method for data until the step budget is spent; evaluate every `eval_every` steps."""
        phase = 0
        while self.step < self.cfg.max_steps:
            data: TrainData | None = method.data(ctx, phase)
            phase += 1
            if data is None:
                break
            taken = 0
            for examples in data.steps(self.cfg.batch_size, self.rng):
                taken += 1
                stats = self.update(examples, method.loss, ctx, method.reduction)
                self.step += 1
                on_step(self.step, stats)
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps:
                    on_eval(self.step)
                if self.step >= self.cfg.max_steps:
                    return
            if taken == 0:
                break  # no usable data (e.g. no verified-correct sample): stop rather than spin
        if self.step and self.step % self.cfg.eval_every != 0:
            on_eval(self.step)  # the method stopped early: evaluate where it ended
