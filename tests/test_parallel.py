"""The room for ranks and shards (harness.parallel): its answers in one process and, without a process group, the
split a rank of two would make (the merge over ranks itself is tested by test_distributed.py and test_fsdp.py)."""
from __future__ import annotations

import pytest
import torch

from harness.cost import Cost
from harness.errors import TrainingDiverged
from harness.parallel import Parallel


def test_one_process_handles_everything_and_ignores_train_parallel():
    for mode in ("ddp", "fsdp"):
        room = Parallel(mode)
        assert (room.several, room.main, room.sharded) == (False, True, False)
        items = [1, 2, 3]
        assert room.share(items) is items and room.padded_share(items) is items


def test_one_process_step_is_the_plain_split_and_its_merge_the_tally():
    step = Parallel().step(list("abcde"), 9.0, Cost(), 7)
    assert list(step.micro_batches(2)) == [["a", "b"], ["c", "d"], ["e"]]
    w = torch.ones(1, requires_grad=True)
    assert step.backward((w * 3).sum()) and w.grad.tolist() == [3.0]
    step.add(0.5, {"x": 2.0}, 2, torch.tensor([-0.5, -2.0]))
    step.add(0.25, {"x": 1.0}, 3, torch.tensor([-4.0, -6.0]))
    loss, stats, n, phi = step.merge(torch.nn.Linear(1, 1))
    assert loss == 0.75 and stats == {"x": pytest.approx(2.0 * 2 / 5 + 1.0 * 3 / 5)} and n == 4.0
    # φ = [-0.5, -2, -4, -6]: mean -3.125; below -1: 3 of 4, below -3: 2, below -5: 1
    assert phi == {"data_phi": -3.125, "data_phi_lt1": 0.75, "data_phi_lt3": 0.5, "data_phi_lt5": 0.25}
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 7"):
        step.diverge()


def test_a_sharded_rank_pads_its_share_and_its_micro_batches_with_the_steps_last_example():
    room = Parallel("fsdp", world=2, rank=1)  # rank 1 of 2, as the room would see it; no collective is started
    assert room.sharded and not room.main
    assert room.share([0, 1, 2, 3, 4]) == [1, 3] and room.padded_share([0, 1, 2, 3, 4]) == [1, 3, 4]
    cost = Cost()
    step = room.step([0, 1, 2, 3, 4], 5.0, cost, 1)
    w = torch.ones(1, requires_grad=True)
    trained = []
    for chunk in step.micro_batches(1):
        cost.add("ref", 10)  # a pass the loss ran (a reference): the step's, except on a filler
        trained.append((chunk, step.backward((w * 2).sum())))
    assert trained == [([1], True), ([3], True), ([4], False)]  # the longest share has 3 micro-batches
    assert w.grad.tolist() == [4.0] and cost.tokens["ref"] == 20  # the filler's backward is zero-weighted


def test_a_diverged_rank_stops_its_share_unsharded_and_keeps_passing_sharded():
    for mode, expected in (("ddp", [[0]]), ("fsdp", [[0], [2]])):
        step = Parallel(mode, world=2, rank=0).step([0, 1, 2, 3], 4.0, Cost(), 1)
        seen = []
        for chunk in step.micro_batches(1):
            seen.append(chunk)
            if chunk == [0]:
                step.diverge()  # raised later, on every rank, by the merge
                w = torch.ones(1, requires_grad=True)
                assert not step.backward((w * 2).sum())
                assert (w.grad is not None) == (mode == "fsdp")  # sharded: a zero pass for the others' gathers
        assert seen == expected and step.diverged
