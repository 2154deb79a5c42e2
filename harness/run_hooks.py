"""What harness.run logs at an evaluation besides the in-run metrics: the cost so far and the evaluation of record."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from harness import metric_names as N

if TYPE_CHECKING:
    import numpy as np
    import torch

    from harness.context import Context
    from harness.engine import Trainer
    from harness.sampler import Sampler


def run_cost(policy: torch.nn.Module, trainer: Trainer, sampler: Sampler, eval_s: float,
             t0: float) -> dict[str, float]:
    """The run's cost/ metrics so far: tokens, seconds by phase (wall since `t0`) and FLOPs by kind of pass."""
    n, counted = sum(p.numel() for p in policy.parameters()), trainer.cost
    return {N.COST_TRAIN_TOKENS: counted.trained_tokens, N.COST_GEN_TOKENS: counted.tokens["gen"],
            N.COST_TRAIN_S: trainer.train_seconds, N.COST_GEN_S: sampler.gen_seconds,
            N.COST_EVAL_S: eval_s, N.COST_WALL_S: time.perf_counter() - t0, **counted.metrics(n)}


def record_checkpoint(ctx: Context, step: int, in_run: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """The record/ metrics of the policy at `step`: saved, scored by `record_eval` with the run's backend, deleted."""
    # Looked up at each call, so a replaced harness.record_eval.record_eval (tests/test_fsdp.py) is what runs.
    from harness.record_eval import record_eval, record_metrics
    path = ctx.save_checkpoint(f"record-{step:06d}")
    try:
        ev = ctx.run_cfg.eval
        res = record_eval(ctx.world, path, ev.record_backend, device=ctx.run_cfg.train.device,
                          extra_model_args=dict(ev.record_model_args), timeout_s=ev.record_timeout_s)
    finally:
        ctx.delete_checkpoint(path)
    return record_metrics(res, in_run)
