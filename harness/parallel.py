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
from harness.errors import TrainingDiverged

if TYPE_CHECKING:
    from harness.config import TrainConfig
    from harness.cost import Cost

PHI_THRESHOLDS = (1, 3, 5)
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


class Step:
    """One optimizer step as this rank trains it: its micro-batches, the tally of what they trained, the merge.

    In one process: the step's micro-batches in order and a plain sum. Under N ranks: this rank's share, padded
    with zero-weighted filler passes when sharded, and the merge over ranks."""

    def __init__(self, room: Parallel, examples: list, denom: float, cost: Cost, number: int):
        self.room, self.examples, self.denom, self.cost, self.number = room, examples, denom, cost, number
        self.loss, self.stats, self.phis = 0.0, {}, []
        self.diverged, self._weight = False, 1.0
        self._cost_before = dict(cost.tokens)

    def micro_batches(self, size: int) -> Iterator[list]:
        """This rank's micro-batches of at most `size` examples (then sharded, filler passes to the longest share's
        count: their cost is taken back)."""
        mine = self.room.share(self.examples)
        chunks = [mine[i:i + size] for i in range(0, len(mine), size)]
        for chunk in chunks:
            if self.diverged and not self.room.sharded:
                return  # the ranks raise together at the merge
            self._weight = 1.0
            yield chunk
        longest = math.ceil(math.ceil(len(self.examples) / self.room.world) / size) if self.room.sharded else 0
        for _ in range(longest - len(chunks)):
            counted = dict(self.cost.tokens)
            self._weight = 0.0
            yield self.examples[-1:]
            self.cost.tokens.update(counted)  # a filler's passes (e.g. a reference) are not the step's

    def diverge(self) -> None:
        """The current micro-batch's loss is not finite: raise now in one process, at the merge (on every rank,
        so none is left waiting) under several. A filler's loss is not the step's."""
        if not self._weight:
            return
        if not self.room.several:
            raise TrainingDiverged(f"non-finite loss at step {self.number}")
        self.diverged, self._weight = True, 0.0

    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate `loss`; False for a pass that only keeps sharded ranks in step (a filler, a diverged one)."""
        if self._weight:
            loss.backward()
            return True
        if self.room.sharded:
            (loss * 0).backward()  # the other ranks' passes still need this one's gathers
        return False

    def add(self, loss: float, stats: dict[str, float], n: int, phi: torch.Tensor) -> None:
        """Tally a trained micro-batch of `n` examples: its loss, statistics (weighted by n / step) and φ."""
        self.loss += loss
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0.0) + float(v) * n / len(self.examples)
        self.phis.append(phi)

    def merge(self, model: torch.nn.Module) -> tuple[float, dict[str, float], float, dict[str, float]]:
        """(loss, statistics, trained φ count, φ statistics) of the whole step, gradients summed over ranks.

        In one process the tally itself. φ = DDT's centred log-likelihood of the trained tokens: ~0 on the model's
        own samples, << 0 off-policy."""
        phi = torch.cat(self.phis) if self.phis else torch.zeros(0)
        if not self.room.several:
            fsdp.settle(model)
            stats = {"data_phi": float(phi.mean()), **{f"data_phi_lt{t}": float((phi < -t).float().mean())
                                                       for t in PHI_THRESHOLDS}} if phi.numel() else {}
            return self.loss, self.stats, float(phi.numel()), stats
        loss, merged, sums = self._merge_ranks(phi)
        if not self.room.sharded:  # sharded, each backward has reduce-scattered (summed) its gradients already
            distributed.all_reduce_grads(model.parameters())
        fsdp.settle(model)
        n = sums[1]
        stats = {"data_phi": sums[0] / n, **{f"data_phi_lt{t}": sums[2 + i] / n
                                             for i, t in enumerate(PHI_THRESHOLDS)}} if n else {}
        return loss, merged, n, stats

    def _merge_ranks(self, phi: torch.Tensor) -> tuple[float, dict[str, float], list[float]]:
        """The whole step's loss, statistics, φ sums [Σφ, n, n(φ<-t)...] and cost, from every rank's share.

        One collective per step. Also checks that every rank was given the same step (else every rank raises)."""
        mine = {"check": (fingerprint(self.examples), self.denom), "diverged": self.diverged, "total": self.loss,
                "stats": self.stats, "phi": [float(phi.sum()), float(phi.numel())] + [float((phi < -t).sum())
                                                                                     for t in PHI_THRESHOLDS],
                "cost": {k: v - self._cost_before.get(k, 0) for k, v in self.cost.tokens.items()}}
        ranks = self.room.gather(mine)
        if any(r["check"] != ranks[0]["check"] for r in ranks):
            raise RuntimeError(f"ranks were given different examples at step {self.number}: every rank must "
                               f"compute the same training data (method.data() deterministic given seed and weights)")
        if any(r["diverged"] for r in ranks):
            raise TrainingDiverged(f"non-finite loss at step {self.number}")
        merged: dict[str, float] = {}
        for r in ranks:
            for k, v in r["stats"].items():
                merged[k] = merged.get(k, 0.0) + v
        for k in self.cost.tokens:
            self.cost.tokens[k] = self._cost_before.get(k, 0) + sum(r["cost"][k] for r in ranks)
        return (sum(r["total"] for r in ranks), merged,
                [sum(r["phi"][i] for r in ranks) for i in range(len(mine["phi"]))])
