"""The registry: the eight methods of METHODS.md and any method file added beside them; each registered method trains
two steps on micro (its own `smoke` settings) with a finite loss and moves the weights; a throw-away method in a new
module appears in `harness list`, runs and is swept with no other edit."""
from __future__ import annotations

import math

import pytest
import torch
from method_harness import build, train

from harness.cli import main
from harness.errors import HarnessError
from harness.method import get_method, method_names

# METHODS.md's eight, in report order; a method added later sorts after them by its `order`.
PUBLISHED = ["sft", "self_sft", "iterative_sft", "onpolicy_sft", "tms", "idft", "trapo", "grpo"]


def smoke_overrides(name: str) -> list[str]:
    """`key=value` settings of a method's smoke run, from its class (`Method.smoke`)."""
    return [f"{name}.{k}={v}" for k, v in get_method(name).smoke.items()]


def test_registry_holds_the_eight_published_methods_in_order(capsys):
    assert method_names()[:len(PUBLISHED)] == PUBLISHED
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        cls = get_method(name)
        assert cls.description and cls.paper and "train.lr" in cls.sweep
        assert name in out and cls.paper in out


def test_unknown_method_suggests_a_name():
    with pytest.raises(HarnessError, match="Did you mean 'grpo'.*Valid: .*trapo"):
        get_method("grpoo")


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_two_steps_on_micro(micro_world, name):
    torch.manual_seed(0)
    ctx, method, trainer = build(micro_world, name, ["train.lr=1e-3"] + smoke_overrides(name))
    before = torch.cat([p.detach().flatten().clone() for p in ctx.policy.parameters()])
    stats = train(ctx, method, trainer, 2)
    ctx.close()
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats)
    after = torch.cat([p.detach().flatten() for p in ctx.policy.parameters()])
    assert not torch.equal(before, after)
