"""A sweep's progress events, worker side: each run's start, finish or failure, sent to a sink.

The sink is the display itself (sweeps/progress.py) when the sweep runs in this process, a multiprocessing
queue that the display drains otherwise. A sink that fails never fails a trial.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from harness import metric_names as N

_sink: Callable[[dict], None] | None = None
_started: dict[tuple[str, int], dict] = {}  # (arm, trial) -> the seed being run and when it started


def set_sink(sink: Callable[[dict], None] | None) -> None:
    """Where this process's progress events go (None: nowhere)."""
    global _sink
    _sink = sink


def _emit(event: dict) -> None:
    if _sink is not None:
        try:
            _sink(event)
        except Exception:  # a display problem must never fail a trial
            pass


def run_started(arm: str, trial: int, seed: int, params: dict[str, Any]) -> None:
    """A (trial, seed) run of `arm` starts (or is looked up, if an earlier process finished it)."""
    lr = params.get("train.lr")
    _started[(arm, trial)] = {"seed": seed, "t0": time.time(), "lr": lr}
    _emit({"event": "start", "arm": arm, "trial": trial, "seed": seed, "lr": lr, "pid": os.getpid()})


def run_finished(arm: str, trial: int, seed: int, metrics: dict[str, float], reused: bool = False) -> None:
    """A (trial, seed) run finished with `metrics` (its final target_gain and nontarget_drop are shown)."""
    st = _started.pop((arm, trial), {"t0": time.time(), "lr": None})
    _emit({"event": "reused" if reused else "done", "arm": arm, "trial": trial, "seed": seed, "lr": st["lr"],
           "gain": metrics.get(N.TARGET_GAIN), "drop": metrics.get(N.NONTARGET_DROP),
           "seconds": time.time() - st["t0"], "pid": os.getpid()})


def trial_failed(arm: str, trial: int, reason: str) -> None:
    """The trial failed; the seed it was running is the one reported."""
    st = _started.pop((arm, trial), {"seed": None, "t0": time.time(), "lr": None})
    _emit({"event": "failed", "arm": arm, "trial": trial, "seed": st["seed"], "lr": st["lr"],
           "seconds": time.time() - st["t0"], "reason": reason, "pid": os.getpid()})
