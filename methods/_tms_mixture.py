"""TMS's trajectory mixture q_α = α·q + (1−α)·m: when the teacher is snapshotted, which checkpoint a prompt draws,
and the epoch of examples a draw makes, and what keys the teacher phase's reuse (methods/tms.py runs the
algorithm; these are its pure, seeded parts)."""
from __future__ import annotations

import math

import numpy as np

from harness.baseline import checkpoint_hash
from harness.data import Example, fingerprint


def checkpoint_steps(teacher_steps: int, checkpoints: int) -> list[int]:
    """Teacher steps after which to snapshot: ceil(k·S/T) for k = 1..T, distinct (θ0 excluded)."""
    return sorted({math.ceil(k * teacher_steps / checkpoints) for k in range(1, checkpoints + 1)})


def checkpoint_weights(n: int, schedule: str, progress: float) -> np.ndarray:
    """Probabilities [n] of choosing checkpoint t = 1..n (earliest first) at student progress in [0, 1]."""
    if schedule == "uniform":
        return np.full(n, 1.0 / n)
    w = (1 - progress) * np.arange(n, 0, -1, dtype=float) + progress  # [n]; n..1 at p=0, flat at p=1
    return w / w.sum()


def draw_plan(n: int, alpha: float, weights: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of q_α for n prompts: whether each gets its expert label (prob. α), else which checkpoint t ~ weights."""
    return rng.random(n) < alpha, rng.choice(len(weights), size=n, p=weights)   # [n] bool, [n] checkpoint index


def mix(expert: list[Example], answers, plan: tuple[np.ndarray, np.ndarray]) -> list[Example]:
    """One example per prompt i: expert[i] where the plan says so, else answers[t][i] of its drawn checkpoint t."""
    use_expert, pick = plan
    return [e if u else answers[t][i] for i, (e, u, t) in enumerate(zip(expert, use_expert, pick))]


def draw_epochs(n: int, alpha: float, checkpoints: int, schedule: str, per_epoch: int, max_steps: int,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every student epoch's plan, drawn up front in epoch order, each at the progress its first step will have."""
    progress = [min(1.0, e * per_epoch / max_steps) for e in range(math.ceil(max_steps / per_epoch))]
    return [draw_plan(n, alpha, checkpoint_weights(checkpoints, schedule, p), rng) for p in progress]


def drawn_prompts(plans: list[tuple[np.ndarray, np.ndarray]], checkpoints: int) -> list[list[int]]:
    """For each checkpoint t, the prompts drawn to it in some epoch (ascending): all its snapshot must answer."""
    return [sorted({int(i) for use, pick in plans for i in np.flatnonzero(~use & (pick == t))})
            for t in range(checkpoints)]


def teacher_phase_inputs(ctx, cfg, needs: list[list[int]], teacher: list[list[Example]]) -> dict:
    """Everything the teacher run and its harvest read (harness.phase_cache's key). Nothing here reads the swept
    student rate when `cfg.teacher_lr` is set, so each seed's teacher runs once a sweep."""
    train = ctx.run_cfg.train.model_dump(exclude={"lr"} if cfg.teacher_lr else set())
    return {"world": ctx.world.data_key(), "base": checkpoint_hash(ctx.base_path), "train": train,
            "tms": cfg.model_dump(exclude={"scratch_dir", "reuse_teacher"}), "needs": needs,
            "teacher": (fingerprint([e for b in teacher for e in b]), [len(b) for b in teacher])}
