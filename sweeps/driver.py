"""`harness sweep`: run every method's study to completion; every (trial, seed) a nested MLflow run.

Workers pop the WAITING slots of each method's study (`sweeps.study`), run the
trial's seeds through `harness.run.run` under the method's parent MLflow run,
and tell Optuna the mean (gain, drop). A seed whose MLflow run already FINISHED
is reused, not re-trained, so a retried trial never computes anything twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import metric_names as N
from harness.config import resolve_config
from harness.settings_input import deep_merge
from harness.errors import HarnessError
from harness.method import SweepParam
from sweeps import progress as P
from sweeps import progress_events as E
from sweeps.describe import log_progress
from sweeps.isolation import run_isolated, worker_devices
from sweeps.parents import describe, ensure_parent, finish_parent
from sweeps.spec import SweepSpec, arm_method, arm_overrides, arm_seeds, worker_order
from sweeps.steps_rule import apply_budget, resolve_budget
from sweeps.study import (Heartbeat, local_lock, make_sampler, open_storage, prepare_study, recover_stale,
                          search_space, storage_url, trial_id)


def _nested(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def params_key(params: dict[str, Any]) -> str:
    """A stable id of a hyper-parameter setting (to reuse finished seeds of a retried trial)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def suggest(trial: optuna.Trial, space: dict[str, SweepParam]) -> dict[str, Any]:
    """Draw (or read the enqueued) value of every search dimension."""
    out = {}
    for k, sp in space.items():
        if sp.choices is not None:
            out[k] = trial.suggest_categorical(k, list(sp.choices))
        else:
            out[k] = trial.suggest_float(k, sp.low, sp.high, log=sp.log)
    return out


def objective_values(spec: SweepSpec, gain: float, drop: float) -> list[float]:
    """Optuna values of a trial from its mean gain and drop."""
    if spec.objective == "pareto":
        return [gain, drop]
    if spec.objective == "gain_at_drop_budget":
        return [gain - 10.0 * max(0.0, drop - spec.budget)]
    return [drop + 10.0 * max(0.0, spec.budget - gain)]


def run_trial(spec: SweepSpec, arm: str, study: optuna.Study, trial: optuna.Trial, parent_id: str,
              progress: bool) -> list[float]:
    """Run every seed of one trial (reusing seeds already FINISHED in MLflow); returns objective values.

    The objective reads the validation split (`val/` metrics): Optuna's choices are selections, and every
    selection is made on validation. The eval-split means are kept as user attributes for display only.
    """
    from harness.run import run
    from harness.store import find_run, init_store

    params = suggest(trial, search_space(spec, arm))
    pkey = params_key(params)
    gains, drops, val_gains, val_drops, run_ids = [], [], [], [], []
    for seed in arm_seeds(spec, arm):
        tags = {"kind": "run", "sweep": spec.name, "study": study.study_name, "params_key": pkey,
                "seed": str(seed), "arm": arm}
        E.run_started(arm, trial.number, seed, params)
        done = find_run(spec.name, tags)
        reused = done is not None
        if done is not None:
            metrics = init_store().get_run(done).data.metrics
        else:
            over = deep_merge(arm_overrides(spec, arm), _nested(params))
            over = deep_merge(over, {"train": {"seed": seed}, "tracking": {"experiment": spec.name,
                                                                          "run_name": f"{arm}-t{trial.number}-s{seed}"}})
            cfg = resolve_config(world=spec.world, method=arm_method(spec, arm), overrides=over)
            run_tags = {**tags, "trial": str(trial.number)}
            if spec.isolated:
                done = run_isolated(spec, cfg, parent_id, run_tags)
                metrics = init_store().get_run(done).data.metrics
            else:
                metrics = run(cfg, parent_run_id=parent_id, progress=progress, extra_tags=run_tags)
                done = find_run(spec.name, tags)
        E.run_finished(arm, trial.number, seed, metrics, reused=reused)
        run_ids.append(done)
        gains.append(metrics[N.TARGET_GAIN])
        drops.append(metrics[N.NONTARGET_DROP])
        val_gains.append(metrics[N.VAL_TARGET_GAIN])
        val_drops.append(metrics[N.VAL_NONTARGET_DROP])
    trial.set_user_attr("mlflow_run_ids", run_ids)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    trial.set_user_attr(N.TARGET_GAIN, mean(gains))
    trial.set_user_attr(N.NONTARGET_DROP, mean(drops))
    trial.set_user_attr(N.TRIAL_VAL_TARGET_GAIN, mean(val_gains))
    trial.set_user_attr(N.TRIAL_VAL_NONTARGET_DROP, mean(val_drops))
    return objective_values(spec, mean(val_gains), mean(val_drops))


def work(spec: SweepSpec, arms: list[str], parents: dict[str, str], threads: int | None = None,
         progress: bool = False) -> None:
    """A worker: pop WAITING trials of each arm's study until none is left, and run them."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    storage = open_storage(storage_url(spec))
    for arm in arms:
        study = optuna.load_study(study_name=f"{spec.name}-{arm}", storage=storage, sampler=make_sampler(spec))
        while True:
            with local_lock(spec):
                recover_stale(study)
                if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    break
                trial = study.ask()
            tid = trial_id(storage, study, trial)
            if "fixed_params" not in storage.get_trial_system_attrs(tid):
                # Another machine popped the last slot between our check and ask(): not a slot, drop it.
                study.tell(trial, state=TrialState.PRUNED)
                break
            for k, v in {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}.items():
                trial.set_user_attr(k, v)
            try:
                with Heartbeat(storage, tid):
                    values = run_trial(spec, arm, study, trial, parents[arm], progress)
                study.tell(trial, values)
            except HarnessError as e:
                study.tell(trial, state=TrialState.FAIL)
                E.trial_failed(arm, trial.number, str(e))
                raise
            except Exception as e:  # the run is FAILED in MLflow with its reason; the sweep goes on
                reason = f"{type(e).__name__}: {e}"[:500]
                trial.set_user_attr("failure_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                E.trial_failed(arm, trial.number, reason)
            log_progress(study, parents[arm])


def _spawned_worker(spec_json: str, methods: list[str], parents: dict[str, str], threads: int, events,
                    devices: str | None = None) -> None:
    if devices is not None:  # before anything initialises CUDA in this fresh process
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    E.set_sink(events.put)
    work(SweepSpec.model_validate_json(spec_json), methods, parents, threads=threads, progress=False)


def run_sweep(spec: SweepSpec, workers: int = 1, progress: bool = True, spec_path: str | None = None,
              live: bool | None = None, stream=None) -> dict[str, list[dict]]:
    """Run (or resume) a sweep to completion; returns each method's Pareto set. Raises if every trial failed.

    `progress`: a live display where `stream` (stdout) is a terminal (`live` forces it either way); else,
    and always without `progress`, one line per finished run and a summary line now and then."""
    import multiprocessing as mp
    import queue as queue_mod

    from harness.run import prepare_world
    from harness.store import ensure_experiment, mark_stale_runs
    from harness.world import build_world
    from sweeps.spec import resolve_methods

    methods = resolve_methods(spec)
    worlds, arms = {}, {}
    for m in methods:  # every error in the spec surfaces before anything trains
        search_space(spec, m)
        cfg = resolve_config(world=spec.world, method=arm_method(spec, m), overrides=arm_overrides(spec, m))
        worlds.setdefault(cfg.world.data_key(), cfg)
        arms.setdefault(cfg.world.data_key(), []).append(arm_method(spec, m))
    # A method a world cannot train (a real target that cannot reward it) is refused before anything is written.
    for key, cfg in worlds.items():
        world = build_world(cfg.world)
        for method in arms[key]:
            world.check_method(method)
    exp_id = ensure_experiment(spec.name)
    mark_stale_runs(exp_id)
    stream = stream or sys.stdout
    live = progress and (P.is_terminal(stream) if live is None else live)
    for cfg in worlds.values():  # pretrain the base and score it once per world variant, before workers start
        t0 = time.time()
        if not live:
            print(f"preparing world {cfg.world.name!r} (target {cfg.world.target_task}): its base model (the shipped "
                  "copy, or pretrained here, on first use) and its scores, then cached", file=stream, flush=True)
        prepare_world(cfg, progress=progress)  # in a log: pretraining's bar every 30 s, a GGUF conversion's line
        if not live:
            print(f"world {cfg.world.name!r} ready ({time.time() - t0:.0f} s)", file=stream, flush=True)
    spec = apply_budget(spec, resolve_budget(spec, exp_id, log=lambda line: print(line, file=stream, flush=True)))
    # One process of this machine at a time finds/creates the parents and writes notes (one tag's writes collide).
    with local_lock(spec):
        storage = open_storage(storage_url(spec))
        studies = {m: prepare_study(spec, m, storage) for m in methods}
        parents = {m: ensure_parent(spec, m, exp_id) for m in methods}
        describe(spec, methods, exp_id, parents, spec_path, workers)

    # The display reads the storage from its own thread: give it its own connection.
    display = P.SweepProgress(spec, methods, open_storage(storage_url(spec)), workers, live=live, stream=stream)
    with display:
        if workers <= 1:
            devices = worker_devices(spec, 0, 1)
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
            E.set_sink(display.handle)
            try:
                work(spec, methods, parents)
            finally:
                E.set_sink(None)
        else:
            threads = max(1, (os.cpu_count() or 2) // workers)
            ctx = mp.get_context("spawn")
            events = ctx.Queue()
            procs = [ctx.Process(target=_spawned_worker,
                                 args=(spec.model_dump_json(), worker_order(spec, methods, i, workers), parents, threads,
                                       events, worker_devices(spec, i, workers)))
                     for i in range(workers)]
            for p in procs:
                p.start()

            def drain(timeout: float) -> None:
                try:
                    display.handle(events.get(timeout=timeout))
                    while True:
                        display.handle(events.get_nowait())
                except queue_mod.Empty:
                    pass

            while any(p.is_alive() for p in procs):
                drain(1.0)
                display.tick()
            for p in procs:
                p.join()
            drain(0.2)
    with local_lock(spec):
        fronts = {m: finish_parent(spec, studies[m], parents[m]) for m in methods}
        describe(spec, methods, exp_id, parents, spec_path, workers, fronts)
    if not any(fronts.values()):
        raise RuntimeError(f"every trial of sweep {spec.name!r} failed; see failure_reason in the MLflow runs")
    return fronts
