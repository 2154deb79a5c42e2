"""One optimizer step as a rank trains it: its share of micro-batches, the tally of what they trained, the merge.

`Parallel.step` (harness/parallel.py) makes one; with one process the merge is the tally itself.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch

from harness import distributed, fsdp
from harness.data import fingerprint
from harness.errors import TrainingDiverged

if TYPE_CHECKING:
    from harness.cost import Cost
    from harness.parallel import Parallel

PHI_THRESHOLDS = (1, 3, 5)


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
