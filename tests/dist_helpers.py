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
