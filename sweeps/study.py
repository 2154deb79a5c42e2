"""Optuna studies of a sweep: storage, search spaces, exact trial *slots*, and recovery of dead trials.

Exact trial counts across re-runs and workers come from slots: when a study is
created, `trials` WAITING trials are enqueued once (grid points, or empty ones
whose parameters the sampler fills in when popped). Workers only pop WAITING
trials, so nothing is computed twice and the total equals the spec. A trial
left RUNNING by a dead worker (same host and pid gone, or no heartbeat for
`STALE_AFTER_S`) is failed and its parameters are enqueued again.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from harness import metric_names as N
from harness.errors import HarnessError
from harness.method import SweepParam, get_method
from sweeps.spec import SweepSpec, arm_method, arm_trials

STALE_AFTER_S = 300.0
HEARTBEAT_S = 20.0  # a running trial's worker writes its heartbeat this often
optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(spec: SweepSpec) -> str:
    """The spec's storage, or a journal file next to the working directory."""
    return spec.storage or str(Path.cwd() / f"optuna-{spec.name}.log")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for database URLs, else Optuna's journal file (fast and safe for local processes)."""
    if "://" in url:
        # Workers on several machines may create the schema at once (a CREATE TYPE race): retry briefly.
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            except Exception as e:  # sqlalchemy IntegrityError/ProgrammingError while another process creates it
                if attempt == 4 or "does not exist" in str(e) or "could not connect" in str(e):
                    raise HarnessError(f"cannot open Optuna storage {url!r}: {e}".splitlines()[0]) from None
                time.sleep(1.0 + attempt)
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(url))


@contextmanager
def local_lock(spec: SweepSpec):
    """Serialise study preparation, stale recovery and popping among processes of this machine."""
    key = hashlib.sha1(storage_url(spec).encode()).hexdigest()[:12]
    with FileLock(str(Path(os.environ.get("TMPDIR", "/tmp")) / f"harness-sweep-{key}.lock")):
        yield


def search_space(spec: SweepSpec, arm: str) -> dict[str, SweepParam]:
    """The arm's method's declared space restricted to `spec.params`, with the spec's overrides (by arm or method)."""
    method = arm_method(spec, arm)
    declared = dict(get_method(method).sweep)
    for key, sp in spec.space.get(arm, spec.space.get(method, {})).items():
        declared[key] = SweepParam(sp.low, sp.high, sp.log, tuple(sp.choices) if sp.choices else None)
    missing = [p for p in spec.params if p not in declared]
    if missing:
        raise HarnessError(f"method {method!r} declares no search space for {missing}; declared: {sorted(declared)}")
    return {k: declared[k] for k in spec.params}


def grid(space: dict[str, SweepParam], n: int) -> list[dict[str, Any]]:
    """`n` points: log-spaced (or linear) over the first float dimension, others at their lower end/first choice."""
    keys = list(space)
    points = []
    for i in range(n):
        frac = 0.5 if n == 1 else i / (n - 1)
        pt = {}
        for j, k in enumerate(keys):
            sp = space[k]
            if sp.choices is not None:
                pt[k] = sp.choices[i % len(sp.choices)] if j == 0 else sp.choices[0]
            elif j == 0:
                lo, hi = (math.log(sp.low), math.log(sp.high)) if sp.log else (sp.low, sp.high)
                v = lo + frac * (hi - lo)
                pt[k] = float(min(sp.high, max(sp.low, math.exp(v) if sp.log else v)))  # no rounding past the ends
            else:
                pt[k] = sp.low
        points.append(pt)
    return points


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """Pinned sampler and seed (Optuna 5 changed the defaults)."""
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed)


def directions(spec: SweepSpec) -> list[str]:
    """Objective directions of the spec's objective mode."""
    return {"pareto": ["maximize", "minimize"], "gain_at_drop_budget": ["maximize"],
            "drop_at_gain_target": ["minimize"]}[spec.objective]


def metric_names(spec: SweepSpec) -> list[str]:
    """Names of the objective values, stored on each study so Optuna's tools (optuna-dashboard) label them.

    The objective reads the validation split (every selection does), and the names say so.
    """
    return {"pareto": [N.TRIAL_VAL_TARGET_GAIN, N.TRIAL_VAL_NONTARGET_DROP],
            "gain_at_drop_budget": [N.TRIAL_VAL_TARGET_GAIN + "_at_drop_budget"],
            "drop_at_gain_target": [N.TRIAL_VAL_NONTARGET_DROP + "_at_gain_target"]}[spec.objective]


def prepare_study(spec: SweepSpec, method: str, storage) -> optuna.Study:
    """Create or load the arm's study and top up its WAITING slots to its trials (call under the lock)."""
    study = optuna.create_study(study_name=f"{spec.name}-{method}", storage=storage, directions=directions(spec),
                                sampler=make_sampler(spec), load_if_exists=True)
    if study.metric_names != metric_names(spec):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and the way Optuna's tools read names
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(spec))
    slots, trials = int(study.user_attrs.get("slots", 0)), arm_trials(spec, method)
    if slots < trials:
        space = search_space(spec, method)
        # A larger grid shares its end points with the smaller one: enqueue only the new points, then
        # let the sampler fill any slot the grid cannot.
        count = len(study.get_trials(deepcopy=False))
        for pt in grid(space, trials) if spec.sampler == "grid" else []:
            if slots >= trials:
                break
            study.enqueue_trial(pt, skip_if_exists=True)
            now = len(study.get_trials(deepcopy=False))
            slots, count = slots + now - count, now
        while slots < trials:
            study.enqueue_trial({})
            slots += 1
        study.set_user_attr("slots", slots)
        study.set_user_attr("space", {k: vars(v) | {"choices": list(v.choices) if v.choices else None}
                                      for k, v in space.items()})
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def recover_stale(study: optuna.Study) -> list[int]:
    """Fail trials whose worker died and enqueue their parameters again (call under the lock)."""
    host, now, out = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ua = t.user_attrs
        dead = ua.get("host") == host and "pid" in ua and not _alive(int(ua["pid"]))
        silent = now - float(ua.get("heartbeat", now)) > STALE_AFTER_S
        if dead or silent:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            out.append(t.number)
    return out


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, trial: optuna.Trial) -> int:
    """The storage's id of a study's trial, through the storage's public API (not `trial._trial_id`)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                           trial.number)


class Heartbeat:
    """Writes a trial's `heartbeat` user attribute every HEARTBEAT_S seconds while it runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial may have been finished meanwhile; never kill the run for it
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
