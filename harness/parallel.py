"""Ranks and shards in one room: every question about the other processes of a run is asked here.

`Parallel` is built once per run from `train.parallel` and the process group (`Parallel.join`); the Trainer, the
Context and the sampler factory take it and ask it, never the config or the environment. With one process every
answer is the single-process one (one share: everything; the merge: the identity), whatever `train.parallel` says.

What N ranks do (launched as harness/distributed.py describes; its helpers are the collectives used here):
- Every rank runs the same code with the same seeds, so every rank calls `method.data()` identically
  (`same_data` turns a disagreement into an error on every rank, not a hang). Rollouts and samples are split:
  each rank samples `prompts[rank::N]` and every rank gets all of them (harness.sampler.RankShardedSampler).
- Each optimizer step (`step`) is split strided, `examples[rank::N]`, against the whole step's per-token (or
  per-sequence) denominator, which every rank can count because every rank holds the whole step. Each rank
  backpropagates its share micro-batch by micro-batch; `Step.merge` then sums the gradients over ranks (one
  bucketed all-reduce: DDP with `no_sync` on all but the last micro-batch, summing instead of averaging) and the
  step's loss, statistics, φ and cost (one all-gather, which also checks every rank was given the same step).
  Clipping, AdamW and the schedule then run on identical gradients everywhere, so the weights stay identical.
- `train.parallel=fsdp` (`sharded`) shards the policy and the reference (harness/fsdp.py, FSDP2); each backward
  reduce-scatters (sums) its own gradients. Every pass gathers layers collectively, so every rank must run as many:
  a shorter share is padded with zero-weighted passes over the step's last example (micro-batches, scoring shares,
  sampling in lockstep).
- Evaluation, base scoring and MLflow logging run on rank 0 alone (`evaluate`; `distributed.solo`), the others
  waiting at a barrier, after which rank 0's RNG states are copied to all. Sharded, every rank first joins the
  gather of the policy into rank 0's unsharded evaluation copy (fsdp.Twin), which `eval_policy`, `eval_base` and
  checkpoints read.
"""
from __future__ import annotations

import math
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch

from harness import distributed, fsdp
from harness.data import fingerprint
from harness.step import Step

if TYPE_CHECKING:
    from harness.config import TrainConfig
    from harness.cost import Cost

T = TypeVar("T")
full = fsdp.full  # the whole of a possibly sharded tensor: how the engine reads the clipped gradient norm


class Parallel:
    """The run's ranks: who handles which rows, whether the model is sharded, and the merge of a step."""

    def __init__(self, mode: str = "ddp", world: int = 1, rank: int = 0, cfg: TrainConfig | None = None):
        self.mode, self.world, self.rank, self.cfg = mode, world, rank, cfg
        self.several = world > 1
        self.main = rank == 0  # evaluates and logs
        self.sharded = mode == "fsdp" and self.several  # one process ignores train.parallel
        self._copies: fsdp.Twin | None = None

    @classmethod
    def of(cls, cfg: TrainConfig | None = None) -> Parallel:
        """The room of this process's group (one process when none) under `cfg.parallel`."""
        return cls(cfg.parallel if cfg is not None else "ddp", distributed.world_size(), distributed.rank(), cfg)

    @classmethod
    def join(cls, cfg: TrainConfig) -> Parallel:
        """Join the group a launcher describes (harness.distributed.init_from_env), then `of(cfg)`."""
        distributed.init_from_env(cfg.device)
        return cls.of(cfg)

    def rank0_first(self, on_main: Callable[[], T], elsewhere: Callable[[], T]) -> T:
        """`on_main()` on rank 0; once it is done, `elsewhere()` on the others (rank 0 builds and scores the base,
        the others load it from the cache); then every rank takes rank 0's RNG states, so whatever rank 0 drew,
        every rank samples alike from here."""
        out = on_main() if self.main else None
        distributed.barrier()
        if not self.main:
            out = elsewhere()
        distributed.broadcast_rng_state()
        return out

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Rank 0's work after the others have returned (the evaluation of record): no collective may start."""
        with distributed.solo():
            yield

    # --- which rows this rank handles ------------------------------------------------------------------------
    def share(self, items: list) -> list:
        """This rank's strided share, items[rank::N] (all of them in one process)."""
        return items if not self.several else items[self.rank::self.world]

    def padded_share(self, items: list) -> list:
        """`share`, padded under sharding with the last item to the longest share's length, so every rank runs as
        many passes. The last item always belongs to a longest share: a rank never pads with one of its own."""
        mine = self.share(items)
        return mine + items[-1:] * (math.ceil(len(items) / self.world) - len(mine)) if self.sharded else mine

    def same_data(self, data: Any, what: str) -> None:
        """Raise on every rank when the ranks' `method.data()` (TrainData or None) differ (no-op in one process)."""
        if self.several:
            distributed.check_same(None if data is None else (fingerprint(data.examples), data.batch_size,
                                                              data.shuffle, data.passes, data.max_steps), what)

    def lockstep(self, model: torch.nn.Module | None) -> bool:
        """Whether sampling `model` (None: the policy, sharded later) must keep the ranks' passes in step."""
        return self.sharded if model is None else fsdp.is_sharded(model)

    def all_done(self, done_here: bool) -> bool:
        """Lockstep decoding: whether every rank's rows have ended (one all-reduce)."""
        return distributed.all_reduce_sum([0.0 if done_here else 1.0])[0] == 0.0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        return distributed.all_gather_object(obj)

    # --- the model ---------------------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights (as DDP does); sharded, the policy is then split over the ranks."""
        if self.several:
            with torch.no_grad():
                for t in model.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
        if self.sharded:
            fsdp.check(self.cfg)
            fsdp.shard(model)

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (the reference) sharded like the policy."""
        return fsdp.shard(model, frozen=True) if self.sharded else model

    @staticmethod
    def settle(model: torch.nn.Module) -> None:
        """Where the sharded parameters themselves are needed (an optimizer, a state dict): reshard the root."""
        fsdp.settle(model)

    @staticmethod
    def copy_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy full (or identically sharded) weights into `model`, shard by shard where sharded."""
        fsdp.copy_state(model, state)

    # --- a step ------------------------------------------------------------------------------------------------
    def step(self, examples: list, denom: float, cost: Cost, number: int) -> Step:
        """Optimizer step `number` over `examples` as this rank trains it: its micro-batches, tally and merge."""
        return Step(self, examples, denom, cost, number)

    # --- rank 0's evaluation -----------------------------------------------------------------------------------
    def copies_from(self, load: Callable[[str], torch.nn.Module]) -> None:
        """How rank 0 loads an unsharded model in a dtype (CPU), for its evaluation copies when sharded."""
        if self.cfg is not None and self.sharded:  # the copies hold the loader (a Context method): only when used
            self._copies = fsdp.Twin(load, *fsdp.eval_dtypes(self.cfg))

    def eval_policy(self, policy: torch.nn.Module) -> torch.nn.Module:
        """The policy as rank 0 evaluates it alone: itself, or sharded, its copy gathered at this evaluation point."""
        return self._copies.policy if self.sharded else policy

    def eval_base(self, base: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The base rank 0 compares with: `base()`, or sharded, an unsharded copy loaded from disk."""
        return self._copies.base if self.sharded else base()

    def evaluate(self, policy: torch.nn.Module, step: int, run: Callable[[], None]) -> None:
        """`run()` on rank 0 alone while the others wait, then every rank takes rank 0's RNG states.

        Sharded, every rank first joins the gather of the policy into rank 0's copy, on its device meanwhile."""
        if self.sharded:
            state = fsdp.full_state(policy)
            if self.main:
                self._copies.refresh(state, step)
                self._copies.place(self.cfg.device)
        if self.main:
            try:
                with distributed.solo():
                    run()
            finally:
                if self.sharded:
                    self._copies.place("cpu")  # its device holds only its shards between evaluations
        distributed.barrier()
        distributed.broadcast_rng_state()

    def save(self, policy: torch.nn.Module, step: int, path: Path,
             write: Callable[[torch.nn.Module], None]) -> Path:
        """`write(model)` of the whole policy at `step` to `path`; returns the path every rank reads.

        Sharded, every rank calls it (all gather, rank 0 writes, every rank gets rank 0's path), except in rank-0-only
        code (`distributed.solo`: a record evaluation), which writes the copy gathered at this evaluation point."""
        collective = self.sharded and not distributed.in_solo()
        model: torch.nn.Module | None = policy
        if collective:
            state = fsdp.full_state(policy)
            if self.main:
                self._copies.refresh(state, step)
        if self.sharded:
            model = self._copies.policy if self.main else None
            if model is not None and self._copies.step != step:
                raise RuntimeError(f"the gathered policy is from step {self._copies.step}, not {step}")
        if model is not None:
            write(model)
        if collective:
            path = distributed.broadcast_object(path)  # one machine (or a shared disk): every rank reads rank 0's
            distributed.barrier()
        return path

    def removes_files(self) -> bool:
        """Whether this rank deletes a saved checkpoint now: sharded, rank 0, once every rank is done with it."""
        if self.sharded and not distributed.in_solo():
            distributed.barrier()
            return self.main
        return True
