"""Helpers shared by the multi-process tests (test_distributed.py, test_fsdp.py): launching ranks, a result cache."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable

import pytest

_ONCE: dict[tuple, Any] = {}


def free_port() -> int:
    """A TCP port free on this machine now (for the env:// rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(fn: Callable, args: tuple, nprocs: int, timeout_s: float) -> None:
    """Run fn(rank, *args) in `nprocs` spawned processes; re-raise a rank's exception; fail (not hang) past timeout_s."""
    import torch.multiprocessing as mp
    procs = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not procs.join(timeout=2):  # re-raises a rank's exception
        if time.monotonic() > deadline:  # a collective that never completes: do not hang the suite
            for p in procs.processes:
                p.kill()
            pytest.fail(f"{nprocs} ranks did not finish in {timeout_s} s")


def once(key: tuple, compute: Callable[[], Any]) -> Any:
    """compute() the first time `key` is asked for in this pytest process, then the same result (one-process
    references both multi-process test files compare with, computed once when they run together)."""
    if key not in _ONCE:
        _ONCE[key] = compute()
    return _ONCE[key]


def join_as_rank(rank: int, world: int, port: int, mlflow_uri: str, base_path: str) -> tuple:
    """In a spawned rank: join the gloo group as a launcher's env:// rendezvous would, one thread; returns the
    micro world's (world, model, tokenizer) loaded from `base_path`."""
    import os

    import torch
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "MLFLOW_TRACKING_URI": mlflow_uri})
    torch.set_num_threads(1)
    from harness import distributed
    from harness.config import resolve_config
    from harness.modeling import load_model
    from harness.world import build_world
    assert distributed.init_from_env("cpu") and distributed.rank() == rank
    cfg = resolve_config(world="micro", method="sft")
    world_ = build_world(cfg.world)
    assert world_.base_path(progress=False) == base_path
    return (world_, *load_model(base_path))
