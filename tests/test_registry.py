"""The registry: exactly the eight methods, each trains two steps on micro with a finite loss and moves the weights."""
from __future__ import annotations

import math

import pytest
import torch
from method_harness import build, train

from harness.cli import main
from harness.errors import HarnessError
from harness.method import get_method, method_names

EXPECTED = ["sft", "self_sft", "iterative_sft", "onpolicy_sft", "tms", "idft", "trapo", "grpo"]
# Smaller settings so every method's two steps take about a second on micro.
FAST = {"tms": ["tms.checkpoints=2", "tms.teacher_steps=2"], "grpo": ["grpo.prompts_per_step=8"],
        "trapo": ["trapo.prompts_per_step=4"], "self_sft": ["self_sft.samples=8"],
        "onpolicy_sft": ["onpolicy_sft.samples=8"], "iterative_sft": ["iterative_sft.samples=8"]}


def test_registry_holds_exactly_the_eight_methods_in_order(capsys):
    assert method_names() == EXPECTED
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        cls = get_method(name)
        assert cls.description and cls.paper and "train.lr" in cls.sweep
        assert name in out and cls.paper in out


def test_unknown_method_suggests_a_name():
    with pytest.raises(HarnessError, match="Did you mean 'grpo'.*Valid: .*trapo"):
        get_method("grpoo")


@pytest.mark.parametrize("name", EXPECTED)
def test_every_method_trains_two_steps_on_micro(micro_world, name):
    torch.manual_seed(0)
    ctx, method, trainer = build(micro_world, name, ["train.lr=1e-3"] + FAST.get(name, []))
    before = torch.cat([p.detach().flatten().clone() for p in ctx.policy.parameters()])
    stats = train(ctx, method, trainer, 2)
    ctx.close()
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats)
    after = torch.cat([p.detach().flatten() for p in ctx.policy.parameters()])
    assert not torch.equal(before, after)
