"""Build a method's Context on the micro world without MLflow, for method-level tests."""
from __future__ import annotations

import copy

from harness.world import build_world
from harness.config import resolve_config
from harness.context import Context
from harness.engine import Trainer
from harness.sampler import build_sampler
from harness.method import get_method


def build(micro_world, method: str, overrides: list[str] | tuple = ()):
    """(ctx, method, trainer) for `method` on a fresh copy of the micro base; nothing is logged."""
    world, model, tok = micro_world
    cfg = resolve_config(world="micro", method=method, overrides=list(overrides))
    policy = copy.deepcopy(model)
    trainer = Trainer(policy, tok.pad_token_id, cfg.train)
    logged: list = []
    ctx = Context(run_cfg=cfg, world=build_world(cfg.world), policy=policy, tokenizer=tok,
                  base_path=world.base_path(progress=False), trainer=trainer, sampler=build_sampler(cfg, policy, tok),
                  log=lambda stats, step: logged.append((step, stats)))
    ctx.logged = logged
    return ctx, get_method(method)(cfg.method_args), trainer


def train(ctx, method, trainer, steps: int) -> list[dict]:
    """Run the engine loop for `steps` optimizer steps (no evaluation); returns per-step stats."""
    trainer.cfg = trainer.cfg.model_copy(update={"max_steps": steps, "eval_every": 10_000})
    out: list[dict] = []
    trainer.train(method, ctx, on_step=lambda s, st: out.append(st), on_eval=lambda s: None)
    return out
