"""The one training loop shared by every method.

The engine owns what must be identical across methods -- optimizer (AdamW),
schedule, clipping, gradient accumulation, precision, the step budget, the
evaluation cadence, logging -- and asks the method only for data and per-token
losses. Per-token losses are reduced once per optimizer step (sum over the
step / number of trained tokens, or sequences), so micro-batching never
changes the result -- nor does splitting a step over N data-parallel processes
(`harness.distributed`: each rank trains its strided share of every step against
the step's global denominator, and the gradients are summed over ranks before
clipping and AdamW; with `train.parallel=fsdp` the policy is sharded, harness.fsdp).
With one process the loop is exactly the single-process one, whatever `train.parallel` says.
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

from harness import distributed, fsdp
from harness.config import TrainConfig
from harness.cost import Cost
from harness.data import Example, TrainData, collate
from harness.errors import TrainingDiverged
from harness.logprobs import compile_scoring, phi as phi_of, token_logprobs
from harness.method import LossOutput, Method

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

    def __init__(self, model: torch.nn.Module, pad_id: int, cfg: TrainConfig):
        self.model, self.pad_id, self.cfg = model, pad_id, cfg
        self.step = 0
        self.cost = Cost()  # the run's one FLOP counter: the sampler and methods report into it too
        self.train_seconds = 0.0
        self.rng = np.random.default_rng(cfg.seed)
        if cfg.gradient_checkpointing:
            # Non-reentrant: works with inputs that need no grad and with the chunked head's own checkpoints.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.compile:
            compile_scoring(model)
        if distributed.world_size() > 1:  # as DDP does: every rank starts from rank 0's weights
            with torch.no_grad():
                for t in model.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
        if fsdp.enabled(cfg):
            fsdp.check(cfg)
            fsdp.shard(model)
        self.sharded = fsdp.is_sharded(model)
        self.reset_optimizer()

    def reset_optimizer(self, horizon: int | None = None, lr: float | None = None) -> None:
        """Fresh AdamW state and a schedule over `horizon` steps (default: the run's budget), peak `lr` (train.lr)."""
        fsdp.settle(self.model)  # the optimizer must hold the sharded parameters, not a gathered root
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

        With N processes (`harness.distributed`) every rank is given the whole step, trains `examples[rank::N]`
        against the whole step's denominator, and the gradients are summed over ranks after the last
        micro-batch; the returned statistics and the cost counter are the whole step's, on every rank. Sharded
        (harness.fsdp), every rank runs the longest share's number of micro-batches, padding with zero-weighted
        passes over the step's last example, because each pass gathers the layers collectively.
        """
        start = time.perf_counter()
        self.model.train()
        if reduction == "token":
            denom = sum(sum(e.train_mask) if e.train_mask is not None else len(e.response_ids) for e in examples)
        else:
            denom = len(examples)
        denom = max(float(denom), 1.0)
        parallel = distributed.world_size() > 1
        mine = distributed.shard(examples)  # this rank's share: all of them in one process
        cost_before = dict(self.cost.tokens)
        total, stats, phis = 0.0, {}, []
        diverged = False
        chunks: list = [mine[i:i + self.cfg.micro_batch_size] for i in range(0, len(mine), self.cfg.micro_batch_size)]
        if self.sharded:
            chunks += [None] * (fsdp.micro_batches(len(examples), self.cfg.micro_batch_size) - len(chunks))
        for chunk in chunks:
            filler = chunk is None
            batch = collate(examples[-1:] if filler else chunk, self.pad_id, self.cfg.device)
            counted = dict(self.cost.tokens)
            forward(self.model, batch, self.cfg.precision, entropy_grad)
            out: LossOutput = loss_fn(ctx, batch)
            loss = (out.token_loss * batch.loss_mask).sum() / denom
            if filler:
                self.cost.tokens.update(counted)  # a filler's passes (e.g. a reference) are not the step's
                (loss * 0).backward()
                continue
            if not torch.isfinite(loss):
                if not parallel:
                    raise TrainingDiverged(f"non-finite loss at step {self.step + 1}")
                diverged = True  # raised on every rank once they have compared notes, so none is left waiting
                if not self.sharded:
                    break
                (loss * 0).backward()  # sharded: the other ranks' passes still need this one's gathers
                continue
            loss.backward()
            total += loss.item()
            for k, v in out.stats.items():
                stats[k] = stats.get(k, 0.0) + float(v) * len(chunk) / len(examples)
            mask = batch.loss_mask > 0
            phis.append(phi_of(batch.logp, batch.entropy)[mask])
            self.cost.add(kind, int(batch.attention_mask.sum()))
        if parallel:
            total, stats, phi_sums = self._merge_ranks(examples, denom, total, stats, phis, cost_before, diverged)
            if not self.sharded:  # sharded, each backward has reduce-scattered (summed) its gradients already
                distributed.all_reduce_grads(self.model.parameters())
        fsdp.settle(self.model)
        grad_norm = float(fsdp.full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"non-finite gradient norm at step {self.step + 1}")
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.train_seconds += time.perf_counter() - start
        if parallel:
            n_phi = phi_sums[1]
            stats.update({"loss": total, "grad_norm": grad_norm, "lr": lr,
                          "trained_tokens": denom if reduction == "token" else n_phi})
            if n_phi:
                stats["data_phi"] = phi_sums[0] / n_phi
                for i, t in enumerate(PHI_THRESHOLDS):
                    stats[f"data_phi_lt{t}"] = phi_sums[2 + i] / n_phi
            return stats
        phi = torch.cat(phis) if phis else torch.zeros(0)
        stats.update({"loss": total, "grad_norm": grad_norm, "lr": lr, "trained_tokens": denom if reduction == "token" else float(phi.numel())})
        if phi.numel():
            # DDT's centred log-likelihood of the trained tokens: ~0 on the model's own samples, << 0 off-policy.
            stats["data_phi"] = float(phi.mean())
            for t in PHI_THRESHOLDS:
                stats[f"data_phi_lt{t}"] = float((phi < -t).float().mean())
        return stats

    def _merge_ranks(self, examples: list[Example], denom: float, total: float, stats: dict[str, float],
                     phis: list[torch.Tensor], cost_before: dict[str, int],
                     diverged: bool) -> tuple[float, dict[str, float], list[float]]:
        """The whole step's loss, statistics, φ sums [Σφ, n, n(φ<-t)...] and cost, from every rank's share.

        One collective per step. Also checks that every rank was given the same step (else every rank raises).
        """
        phi = torch.cat(phis) if phis else torch.zeros(0)
        mine = {"check": (distributed.fingerprint(examples), denom), "diverged": diverged, "total": total,
                "stats": stats, "phi": [float(phi.sum()), float(phi.numel())] + [float((phi < -t).sum())
                                                                                for t in PHI_THRESHOLDS],
                "cost": {k: v - cost_before.get(k, 0) for k, v in self.cost.tokens.items()}}
        ranks = distributed.all_gather_object(mine)
        if any(r["check"] != ranks[0]["check"] for r in ranks):
            raise RuntimeError(f"ranks were given different examples at step {self.step + 1}: every rank must "
                               f"compute the same training data (method.data() deterministic given seed and weights)")
        if any(r["diverged"] for r in ranks):
            raise TrainingDiverged(f"non-finite loss at step {self.step + 1}")
        merged: dict[str, float] = {}
        for r in ranks:
            for k, v in r["stats"].items():
                merged[k] = merged.get(k, 0.0) + v
        for k in self.cost.tokens:
            self.cost.tokens[k] = cost_before.get(k, 0) + sum(r["cost"][k] for r in ranks)
        return (sum(r["total"] for r in ranks), merged,
                [sum(r["phi"][i] for r in ranks) for i in range(len(mine["phi"]))])

    def _evaluate(self, ctx, on_eval: Callable[[int], None]) -> None:
        """`on_eval` on rank 0 only; the other ranks wait, then take rank 0's RNG states (no-ops in one process).

        Sharded, every rank first joins the gather of the policy into rank 0's unsharded copy (`ctx.eval_policy`).
        """
        if self.sharded:
            ctx.gather_for_evaluation()
        if distributed.is_main():
            try:
                with distributed.solo():
                    on_eval(self.step)
            finally:
                if self.sharded:
                    ctx.end_evaluation()
        distributed.barrier()
        distributed.broadcast_rng_state()

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
            if distributed.world_size() > 1:
                distributed.check_same(None if data is None else (distributed.fingerprint(data.examples),
                                       data.batch_size, data.shuffle, data.passes, data.max_steps),
                                       f"method.data(phase={phase - 1})")
            if data is None:
                break
            taken = 0
            for examples in data.steps(self.cfg.batch_size, self.rng):
                taken += 1
                stats = self.update(examples, method.loss, ctx, method.reduction, method.needs_entropy_grad)
                self.step += 1
                on_step(self.step, stats)
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps:
                    self._evaluate(ctx, on_eval)
                if self.step >= self.cfg.max_steps:
                    return
            if taken == 0:
                break  # no usable data (e.g. no verified-correct sample): stop rather than spin
        if self.step and self.step % self.cfg.eval_every != 0:
            self._evaluate(ctx, on_eval)  # the method stopped early: evaluate where it ended
