"""The toy recipe in which Self-SFT vs per-epoch on-policy SFT is a test: `onpolicy_sft.prompts_per_epoch`.

With RbD's epoch (all training prompts) both arms train on the same keyed draws from θ0 until on-policy SFT's
second epoch, long after the matched gain is crossed on toy; sweeps/default.yaml declares 32 prompts per epoch,
so on-policy SFT resamples the live policy every ~2 steps.
"""
from __future__ import annotations

import torch
import yaml

from method_harness import build, train

# 8 samples per prompt (as tests/test_sft_family.py does on micro), batches of 4
COMMON = ["self_sft.samples=8", "onpolicy_sft.samples=8", "train.batch_size=4", "train.micro_batch_size=4"]


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run(micro_world, name, extra=(), steps=4):
    torch.manual_seed(0)
    ctx, method, trainer = build(micro_world, name, COMMON + list(extra))
    train(ctx, method, trainer, steps)
    return ctx, params(ctx.policy)


def test_default_spec_declares_short_onpolicy_epochs():
    spec = yaml.safe_load(open("sweeps/default.yaml"))
    assert spec["overrides"]["onpolicy_sft"]["prompts_per_epoch"] == 32


def test_rbd_epochs_make_onpolicy_sft_identical_to_self_sft_at_first(micro_world):
    # what made the comparison untestable: the same examples from the same keyed draws, the same order
    _, a = run(micro_world, "self_sft", steps=2)
    _, b = run(micro_world, "onpolicy_sft", steps=2)
    assert torch.equal(a, b)


def _slices(micro_world, kept):
    """The prompt slices on-policy SFT samples over 3 epochs of 48 prompts, `kept(i)` examples on its i-th call."""
    ctx, method, _ = build(micro_world, "onpolicy_sft", COMMON + ["onpolicy_sft.prompts_per_epoch=48"])
    seen = []
    sample = method.data.__globals__["self_examples"]
    method.data.__globals__["self_examples"] = lambda c, cfg, items, **kw: (seen.append(items), kept(len(seen)))[1]
    try:
        data = [method.data(ctx, phase) for phase in range(3)]
    finally:
        method.data.__globals__["self_examples"] = sample
    return ctx.world.train_items, seen, data


def test_short_epochs_slice_the_prompts_in_order_and_wrap(micro_world):
    items, seen, _ = _slices(micro_world, lambda i: ["example"])
    assert len(items) == 128 and [len(s) for s in seen] == [48, 48, 48]
    assert seen[0] == items[:48] and seen[1] == items[48:96] and seen[2] == items[96:] + items[:16]


def test_a_slice_without_a_correct_sample_passes_to_the_next(micro_world):
    items, seen, data = _slices(micro_world, lambda i: [] if i == 2 else [f"ex{i}"])
    # epoch 1's slice (48..95) keeps nothing: the same epoch samples the next slice (96..127, 0..15) instead
    assert [d.examples for d in data] == [["ex1"], ["ex3"], ["ex4"]]
    assert seen[2] == items[96:] + items[:16] and seen[3] == items[16:64]
    _, seen, data = _slices(micro_world, lambda i: [])
    # a whole pass (ceil(128 / 48) = 3 slices) keeps none: that epoch is empty, so the engine ends the run
    assert len(seen) == 9 and all(d.examples == [] for d in data)


def test_short_epochs_resample_several_times_and_differ_from_self_sft(micro_world):
    # ~64% of micro prompts have a correct sample in 8: 12 prompts keep ~8 examples, 2 steps of 4
    ctx, b = run(micro_world, "onpolicy_sft", ["onpolicy_sft.prompts_per_epoch=12"], steps=6)
    epochs = [s["train/epoch"] for _, s in ctx.logged if "train/epoch" in s]
    assert len(epochs) >= 3                                             # resampled ≥ 2 times within 6 steps
    _, a = run(micro_world, "self_sft", steps=6)
    assert not torch.equal(a, b)
