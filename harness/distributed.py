"""Collectives for training over N processes; with one process every helper here is a no-op.

Launch (one process per GPU; the launcher only sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    accelerate launch --multi_gpu --num_processes N -m harness.cli run ...      # or torchrun --nproc_per_node N
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no -m harness.cli run ... train.device=cpu   # 2 CPU processes (gloo)

(`accelerate launch --cpu --num_processes 2` starts ONE process: REAL-SCALE-NOTES.md §2.) `harness.run.run` calls
`init_from_env` (through `Parallel.join`), which joins the process group the launcher describes (nccl for a cuda policy, gloo otherwise);
accelerate itself is never imported.

What N ranks do, and which mode asks for what, is decided in one place: harness/parallel.py (`Parallel`, built once
per run). This module is its toolbox: joining the group and the collectives, each a no-op in one process. Code
inside `solo()` is rank-0-only (evaluation): it must not start a collective.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

# Rank 0 evaluates while the others wait at a barrier: a real evaluation outlasts NCCL's 10-minute default.
TIMEOUT_S = float(os.environ.get("HARNESS_DIST_TIMEOUT_S", 4 * 3600))
BUCKET_ELEMENTS = 1 << 24  # gradient elements per all-reduce (64 MB in float32)


def initialized() -> bool:
    """Whether this process belongs to a torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if initialized() else 0


def is_main() -> bool:
    """Rank 0 (the only process when not distributed): evaluates and logs."""
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the group an `accelerate launch`/torchrun launcher describes (WORLD_SIZE > 1); True if distributed.

    nccl for a cuda policy (after selecting cuda:LOCAL_RANK, so a plain "cuda" means this rank's GPU), else gloo.
    """
    if initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    return world_size() > 1


def _device() -> torch.device:
    """Where collectives' tensors live: the current GPU under nccl, else the CPU."""
    if initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_SOLO = [False]  # inside `solo()`: only rank 0 runs here


@contextmanager
def solo() -> Iterator[None]:
    """Mark code that rank 0 runs alone while the others wait (evaluation): no collective may start inside."""
    before, _SOLO[0] = _SOLO[0], True
    try:
        yield
    finally:
        _SOLO[0] = before


def in_solo() -> bool:
    """Whether this is rank-0-only code (`solo`), where a collective would wait forever."""
    return _SOLO[0]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` (picklable), on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def all_reduce_sum(values: torch.Tensor | Sequence[float]) -> torch.Tensor | list[float]:
    """Sum over ranks: a tensor in place (returned), or a list of floats (summed in float64, returned as a list)."""
    if isinstance(values, torch.Tensor):
        if world_size() > 1:
            torch.distributed.all_reduce(values)
        return values
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def check_same(value: Any, what: str) -> None:
    """Raise on every rank (instead of deadlocking later) when the ranks disagree on `value`."""
    if world_size() == 1:
        return
    seen = all_gather_object(value)
    if any(v != seen[0] for v in seen):
        raise RuntimeError(f"ranks disagree on {what} ({seen}): every rank must compute the same training data; "
                           f"method.data() must be deterministic given the seed and weights")


def shard(items: list) -> list:
    """This rank's share of a step: items[rank::world] (all of them in one process)."""
    n = world_size()
    return items if n == 1 else items[rank()::n]


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient over ranks, in flat buckets.

    A rank whose share of the step never reached a parameter holds None there; it takes part with zeros. A
    parameter that got no gradient on any rank keeps None everywhere, as in one process (AdamW skips it).
    """
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    dev = _device()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    torch.distributed.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for p in live:
        if not buckets or size + p.numel() > BUCKET_ELEMENTS or buckets[-1][0].dtype != p.grad.dtype \
                or buckets[-1][0].device != p.grad.device:
            buckets.append([])
            size = 0
        buckets[-1].append(p.grad)
        size += p.numel()
    for grads in buckets:
        flat = torch.cat([g.reshape(-1) for g in grads]).to(dev)
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_rng_state() -> None:
    """Copy rank 0's global RNG states (python, numpy, torch CPU and current CUDA device) to every rank.

    Called after rank-0-only work (evaluation, base scoring) so that a pass there that drew random numbers
    cannot make the ranks' later sampling diverge.
    """
    if world_size() == 1:
        return
    state = [(random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)]
    torch.distributed.broadcast_object_list(state, src=0)
    py, npy, cpu, cuda = state[0]
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
