"""One run: load the world and base, train with a method through the engine, evaluate along the way, log to MLflow.

Under `accelerate launch`/torchrun (WORLD_SIZE > 1) every process runs `run`: the engine splits each step over the
ranks (harness.parallel); base scoring, evaluation and MLflow logging happen on rank 0 only.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import random
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from tqdm.auto import tqdm

from harness import metrics
from harness import metric_names as N
from harness.baseline import BaseScores, label_set, load_or_compute
from harness.config import RunConfig
from harness.context import Context
from harness.engine import Trainer
from harness.evaluation import Evaluator
from harness.modeling import check_device, load_model
from harness.parallel import Parallel
from harness.run_hooks import record_checkpoint, run_cost
from harness.world import build_world
from harness.sampler import build_sampler
from harness.store import ensure_experiment, find_run, store_lock, tracking_uri
from harness.tracking import RunTracker, flatten
from harness.method import get_method

PACKAGES = ("torch", "transformers", "lm-eval", "mlflow", "optuna")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=__file__.rsplit("/", 2)[0]).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[f"version.{p}"] = version(p)
        except PackageNotFoundError:
            pass
    return out


def split_metrics(world, base: dict[str, np.ndarray], correct: dict[str, np.ndarray], prefix: str = "",
                  bootstrap_iters: int = 0, seed: int = 0) -> dict[str, float]:
    """acc/<task>, target_gain, nontarget_drop and drop/<task> of one split (and its paired CIs if asked)."""
    out = {prefix + N.acc(t): 100.0 * float(np.mean(v)) for t, v in correct.items()}
    out[prefix + N.TARGET_GAIN] = metrics.target_gain(base[world.target], correct[world.target])
    drop, per_task = metrics.nontarget_drop(base, correct, world.nontarget)
    out[prefix + N.NONTARGET_DROP] = drop
    out.update({prefix + N.drop(t): d for t, d in per_task.items()})
    if bootstrap_iters:
        cis = metrics.bootstrap_cis(base, correct, world.target, world.nontarget, iters=bootstrap_iters, seed=seed)
        out.update({prefix + k: v for k, v in cis.items()})
    return out


def eval_metrics(world, base: BaseScores, correct: dict[str, dict[str, np.ndarray]], pld_history: list[float],
                 kl: float, bootstrap_iters: int, seed: int) -> dict[str, float]:
    """The DESIGN.md metrics of one evaluation point: eval split un-prefixed (reported), validation under `val/`.

    `correct` is split -> task -> per-example correctness; `pld_history` holds PLD from θ₀ to this point.
    """
    out = split_metrics(world, base.correct_arrays("eval"), correct["eval"], "", bootstrap_iters, seed)
    out.update(split_metrics(world, base.correct_arrays("val"), correct["val"], N.VAL))
    pld = pld_history[-1]
    out.update({N.PLD: pld, N.PLD_DRIFT: pld - base.pld, N.PLD_RISE: metrics.pld_rise(pld_history),
                N.KL_TO_BASE: kl})
    return out


# Base runs known to exist, per (store, experiment, tags): a sweep worker's every run would search MLflow again.
_BASE_RUNS: set[tuple] = set()


def _store_identity() -> tuple:
    """The tracking store: its URI and, for a sqlite file, which file (a deleted-and-recreated DB differs)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        try:
            st = os.stat(uri[len("sqlite:///"):])
            return uri, st.st_dev, st.st_ino
        except OSError:
            return uri, None
    return (uri,)


def ensure_base_run(cfg: RunConfig, world, base: BaseScores) -> None:
    """Log the base model's scores once per (world, checkpoint) as its own MLflow run."""
    tags = {"kind": "base", "world": world.name, "data_key": world.data_key(), "base_checkpoint": base.checkpoint}
    known = (_store_identity(), cfg.tracking.experiment, tuple(sorted(tags.items())))
    if known in _BASE_RUNS:
        return
    ensure_experiment(cfg.tracking.experiment)  # takes the store's lock itself when creating: not inside ours
    with store_lock():  # sweep workers start together: without it each finds no base run and logs its own
        if find_run(cfg.tracking.experiment, tags) is not None:
            _BASE_RUNS.add((_store_identity(), *known[1:]))
            return
        with RunTracker(cfg.tracking.experiment, f"base-{world.name}-{world.target}",
                        params=flatten({"world": world.cfg.model_dump()}), tags=tags) as tr:
            tr.log_metrics({**{N.acc(t): a for t, a in base.acc["eval"].items()},
                            **{N.VAL + N.acc(t): a for t, a in base.acc["val"].items()}, N.PLD: base.pld,
                            N.BASE_LABEL_NLL_TOKEN: base.label_nll_token, N.BASE_LABEL_NLL_SEQ: base.label_nll_seq,
                            N.BASE_OWN_NLL_TOKEN: base.own_nll_token, N.BASE_OWN_NLL_SEQ: base.own_nll_seq}, step=0)
    _BASE_RUNS.add((_store_identity(), *known[1:]))  # the file may have been created just now


# Built evaluators per world data key (the tasks, splits and generation settings): building the lm-eval tasks
# of both splits costs ~0.5-1 s, and a sweep worker runs dozens of runs of one world. Each run gets a shallow
# copy bound to its own world and tokenizer (harness.evaluation.Evaluator.rebind).
_EVALUATORS: dict[str, Evaluator] = {}
_MAX_EVALUATORS = 4


def _evaluator(world, tok, batch_size: int, score_batch_size: int) -> Evaluator:
    key = world.data_key()
    built = _EVALUATORS.get(key)
    if built is None:
        built = Evaluator(world, tok, batch_size, score_batch_size=score_batch_size)
        while len(_EVALUATORS) >= _MAX_EVALUATORS:
            _EVALUATORS.pop(next(iter(_EVALUATORS)))
        _EVALUATORS[key] = built
    return built.rebind(world, tok, batch_size, score_batch_size)


def _freeze_heap() -> None:
    """Collect garbage once, then move every live object out of the cyclic collector's reach (gc.freeze).

    A process that has imported torch, transformers, lm-eval and MLflow holds ~700k objects, and a full
    collection walks them all: 0.5 s, ten times per TMS run (it collects after each checkpoint). Frozen,
    they are skipped; what a run allocates is still collected. Objects alive at a run's start are mostly
    modules and caches that live as long as the process; freezing changes no computed number.
    """
    gc.collect()
    gc.freeze()


def prepare_world(cfg: RunConfig, progress: bool = True):
    """World, base path, a fresh policy, tokenizer, evaluator and the (cached) base scores."""
    _freeze_heap()
    world = build_world(cfg.world)
    world.check_method(cfg.method)  # before the base is scored or anything is logged
    base_path = world.base_path(progress=progress)
    policy, tok = load_model(base_path, device=cfg.train.device, **world.load_kwargs())
    evaluator = _evaluator(world, tok, cfg.eval.batch_size, cfg.score_batch_size)
    base, _ = load_or_compute(world, policy, tok, evaluator, base_path, cfg.eval.batch_size, cfg.score_batch_size)
    ensure_base_run(cfg, world, base)
    return world, base_path, policy, tok, evaluator, base


class _NoTracker:
    """What ranks other than 0 log through: nothing."""

    def __enter__(self) -> "_NoTracker":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _nothing(self, *args, **kwargs) -> None:
        return None

    log_dict = log_metrics = buffer_metrics = log_table = log_text = _nothing


def prepare_policy(cfg: RunConfig):
    """World, base path, a fresh policy and tokenizer: what a rank other than 0 needs (no evaluator, no scores)."""
    _freeze_heap()
    world = build_world(cfg.world)
    base_path = world.base_path(progress=False)
    policy, tok = load_model(base_path, device=cfg.train.device, **world.load_kwargs())
    return world, base_path, policy, tok, None, None


def run(cfg: RunConfig, *, parent_run_id: str | None = None, extra_tags: dict | None = None,
        progress: bool = True) -> dict[str, float]:
    """Train one (world, method, hyper-parameters, seed) and return its final metrics ({"steps"} off rank 0)."""
    check_device(cfg.train.device)  # before anything is computed or logged
    parallel = Parallel.join(cfg.train)  # the run's ranks, asked by the trainer, the context and the sampler
    main = parallel.main
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    method_cls = get_method(cfg.method)
    world, base_path, policy, tok, evaluator, base = parallel.rank0_first(lambda: prepare_world(cfg, progress),
                                                                          lambda: prepare_policy(cfg))
    progress = progress and main

    name = cfg.tracking.run_name or f"{cfg.method}-{world.name}-{world.target}-s{cfg.train.seed}"
    resolved = cfg.model_dump(mode="json")
    final: dict[str, float] = {}
    if main:
        tags = {"method": cfg.method, **world.tags(), "seed": str(cfg.train.seed), "sampler": cfg.train.sampler,
                "base_checkpoint": base.checkpoint, "kind": "run", "git_commit": _git_commit(),
                "python": platform.python_version(), **_versions(), **(extra_tags or {})}
        if parallel.several:
            tags["world_size"] = str(parallel.world)
        tracker = RunTracker(cfg.tracking.experiment, name, params=flatten(resolved), tags=tags,
                             parent_run_id=parent_run_id)
    else:
        tracker = _NoTracker()
    with tracker as tr:
        tr.log_dict(resolved, "config.json")
        trainer = Trainer(policy, tok.pad_token_id, cfg.train, parallel)
        sampler = build_sampler(cfg, policy, tok, parallel)
        ctx = Context(run_cfg=cfg, world=world, policy=policy, tokenizer=tok, base_path=base_path,
                      trainer=trainer, sampler=sampler, log=tr.buffer_metrics)
        method = method_cls(cfg.method_args)
        eval_seconds = 0.0
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.train.max_steps, desc=name, disable=not progress, leave=False)
        last_eval: dict = {}
        last_correct: dict = {}  # split -> task -> per-example correctness at the last evaluation
        pld_prompts, pld_labels = label_set(world, tok)
        pld_history = [base.pld] if main else []

        def cost() -> dict[str, float]:
            return run_cost(policy, trainer, sampler, eval_seconds, t0)

        def on_step(step: int, stats: dict) -> None:
            tr.buffer_metrics({N.TRAIN + k: v for k, v in stats.items()}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", gain=f"{last_eval.get(N.TARGET_GAIN, 0):+.1f}",
                            drop=f"{last_eval.get(N.NONTARGET_DROP, 0):+.1f}")

        def on_eval(step: int) -> None:  # rank 0 only (Trainer.train)
            nonlocal eval_seconds, last_eval
            t = time.perf_counter()
            model = ctx.eval_policy  # the policy, or under fsdp its unsharded copy gathered for this evaluation
            res = evaluator.evaluate(model)
            pld_history.append(metrics.pld(model, pld_prompts, pld_labels, cfg.score_batch_size, tok.pad_token_id))
            kl = metrics.kl_to_base(model, ctx.eval_base, base.kl_prompts, base.kl_responses, cfg.score_batch_size,
                                    tok.pad_token_id, cache_base=True)  # the frozen base is scored once per run
            eval_seconds += time.perf_counter() - t
            correct = {sp: r.correct for sp, r in res.splits.items()}
            last_correct.clear()
            last_correct.update(correct)
            last_eval = eval_metrics(world, base, correct, pld_history, kl, cfg.eval.bootstrap_iters, cfg.train.seed)
            last_eval["eval_responses"] = res.responses  # kept for the final artifact, not logged as a metric
            last_eval["eval_correct"] = res.correct
            tr.log_metrics({k: v for k, v in last_eval.items() if k not in ("eval_responses", "eval_correct")} | cost(),
                           step)
            if cfg.eval.record_backend != "none" and step in cfg.eval.record_steps:
                record(step, correct)

        def record(step: int, in_run: dict[str, dict[str, np.ndarray]]) -> None:  # rank 0: the evaluation of record
            tr.log_metrics(record_checkpoint(ctx, step, in_run), step)

        if main:
            zero = eval_metrics(world, base, {sp: base.correct_arrays(sp) for sp in base.correct}, [base.pld], 0.0,
                                0, cfg.train.seed)
            tr.log_metrics(zero, 0)
            last_eval = dict(zero)  # a run whose method has no data for a single step ends at the base's metrics
        try:
            trainer.train(method, ctx, on_step, on_eval)
        finally:
            bar.close()
            ctx.close()  # scratch checkpoints go even when the run fails
            getattr(sampler, "close", lambda: None)()  # a vLLM engine frees its GPU memory
        if not main:
            return {"steps": float(trainer.step)}
        if cfg.eval.record_backend != "none" and trainer.step not in cfg.eval.record_steps:
            with parallel.alone():
                record(trainer.step, last_correct)
        responses = last_eval.pop("eval_responses", {})
        final_correct = last_eval.pop("eval_correct", {})
        final = {k: v for k, v in last_eval.items()} | cost() | {"steps": float(trainer.step)}
        final.update({N.BASE_LABEL_NLL_TOKEN: base.label_nll_token, N.BASE_LABEL_NLL_SEQ: base.label_nll_seq,
                      N.BASE_OWN_NLL_TOKEN: base.own_nll_token, N.BASE_OWN_NLL_SEQ: base.own_nll_seq})
        tr.log_metrics(final, trainer.step)
        rows = []
        for t, items in world.eval_items.items():
            for i, it in enumerate(items):
                rows.append({"task": t, "idx": i, "prompt": it.prompt, "answer": it.answer,
                             "response": responses.get(t, [""] * len(items))[i],
                             "correct": float(final_correct.get(t, [np.nan] * len(items))[i]),
                             "base_correct": base.correct["eval"][t][i]})
        tr.log_table(rows, "eval/examples.csv")
        tr.log_text(json.dumps(final, indent=2), "final_metrics.json")
    return final
