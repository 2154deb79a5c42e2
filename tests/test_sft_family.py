"""Self-SFT, per-epoch on-policy SFT and iterative SFT: loss by hand, data rules, budgets, end-to-end training."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.data import Example, collate
from harness.sampler import Completion
from methods._sft_family import SelfSampleConfig, nll_loss, self_examples
from methods.iterative_sft import IterativeSFT, IterativeSFTConfig
from methods.onpolicy_sft import OnPolicySFT, OnPolicySFTConfig
from methods.self_sft import SelfSFT, SelfSFTConfig
from methods.sft import SFT, SFTConfig
from method_harness import build, train

torch.set_num_threads(1)
LN2 = math.log(2)


def test_nll_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.125, 0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = nll_loss(logp, mask)
    # per-token −log p: [[ln2, 2ln2, 0], [3ln2, ln2, ln2]] (unmasked; the engine multiplies by the mask)
    assert torch.allclose(out.token_loss, torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 1.0]]) * LN2)
    # masked token mean: (ln2 + 2ln2 + 3ln2) / 3 tokens = 2 ln2 ≈ 1.386
    assert out.stats["nll"] == pytest.approx(2 * LN2)


def test_all_three_use_sfts_loss():
    batch = collate([Example([5, 6], [7, 8]), Example([5], [7, 8, 9])], pad_id=0)
    # target coordinates [2, 3]; row 0's response at positions 1,2, row 1's at 0..2
    batch.logp = torch.log(torch.tensor([[0.9, 0.5, 0.25], [0.5, 0.5, 0.125]]))
    ref = SFT(SFTConfig()).loss(None, batch)
    for m in (SelfSFT(SelfSFTConfig()), OnPolicySFT(OnPolicySFTConfig()), IterativeSFT(IterativeSFTConfig())):
        out = m.loss(None, batch)
        assert m.reduction == "token"
        assert torch.equal(out.token_loss, ref.token_loss)
        # masked mean: (ln2 + 2ln2 + ln2 + ln2 + 3ln2) / 5 = 8/5 ln2 ≈ 1.109
        assert out.stats["nll"] == pytest.approx(1.6 * LN2) == ref.stats["nll"]


class FakeSampler:
    """Returns scripted (text, finished) completions per prompt; counts calls."""

    def __init__(self, script):
        self.script, self.calls = script, 0
        self.gen_tokens, self.gen_seconds = 0, 0.0

    def generate(self, prompts, n, temperature, top_p, max_new_tokens):
        self.calls += 1
        return [[Completion(p, [ord(c) for c in t], t, f) for t, f in self.script[i][:n]] for i, p in enumerate(prompts)]


def fake_ctx(script):
    items = [SimpleNamespace(prompt=f"p{i}", task="sort", key=str(i)) for i in range(len(script))]
    logged = []
    world = SimpleNamespace(train_items=items, max_new_tokens=8,
                            verify=lambda it, r: float(r == "ok"))
    return SimpleNamespace(world=world, sampler=FakeSampler(script), encode=lambda s: [ord(c) for c in s],
                           log=logged.append, logged=logged)


SCRIPT = [[("no", True), ("ok", True), ("ok", True)],   # 2 correct: keep the first
          [("ok", False), ("no", True), ("no", True)],  # correct text but cut off -> incorrect: dropped
          [("no", True), ("no", True), ("ok", True)]]   # correct only as 3rd sample


def test_keep_at_most_one_correct_per_prompt_and_log_coverage():
    ctx = fake_ctx(SCRIPT)
    ex = self_examples(ctx, SelfSampleConfig(samples=3), round=1.0)
    assert [(e.prompt_ids, e.response_ids, e.source) for e in ex] == [([ord("p"), ord("0")], [ord("o"), ord("k")], "self"),
                                                                     ([ord("p"), ord("2")], [ord("o"), ord("k")], "self")]
    # prompts 0 and 2 have a correct, finished sample: coverage 2/3
    assert ctx.logged == [{"coverage": pytest.approx(2 / 3), "kept": 2.0, "round": 1.0}]
    # with k=2, prompt 2's correct sample is never drawn: coverage 1/3, one example
    assert len(self_examples(fake_ctx(SCRIPT), SelfSampleConfig(samples=2))) == 1
    assert len(self_examples(fake_ctx(SCRIPT), SelfSampleConfig(samples=3, keep_per_prompt=2))) == 3


def test_unfiltered_keeps_first_samples_but_still_measures_coverage():
    ctx = fake_ctx(SCRIPT)
    ex = self_examples(ctx, SelfSampleConfig(samples=3), verify=False)
    assert [e.response_ids for e in ex] == [[ord("n"), ord("o")], [ord("o"), ord("k")], [ord("n"), ord("o")]]
    assert ctx.logged[0]["coverage"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("max_steps,rounds", [(150, 3), (10, 3), (7, 4), (2, 3), (5, 1)])
def test_iterative_rounds_split_the_budget(max_steps, rounds):
    m = IterativeSFT(IterativeSFTConfig(rounds=rounds))
    steps = [m.round_steps(max_steps, r) for r in range(rounds)]
    assert min(steps) >= 1
    assert steps[:-1] == [max(1, max_steps // rounds)] * (rounds - 1)
    if max_steps >= rounds:
        assert sum(steps) == max_steps  # e.g. 10, R=3: 3 + 3 + 4


@pytest.fixture
def make(micro_world):
    """build() for this test, torch seeded; every context's scratch folder is removed afterwards.

    The micro base is weak on its target (coverage ~2-9% of 128 prompts at k=2..8), so the tests
    sample 8 per prompt with a fixed seed to keep a few correct samples.
    """
    torch.manual_seed(0)
    made = []

    def f(name, overrides):
        ctx, method, trainer = build(micro_world, name, overrides)
        made.append(ctx)
        return ctx, method, trainer
    yield f
    for ctx in made:
        ctx.close()


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def coverage_logs(ctx):
    return [s for _, s in ctx.logged if "train/coverage" in s]


@pytest.mark.parametrize("name", ["self_sft", "onpolicy_sft", "iterative_sft"])
def test_trains_two_steps_on_micro(make, name):
    ctx, method, trainer = make(name, [f"{name}.samples=8"])
    before = params(ctx.policy)
    stats = train(ctx, method, trainer, 2)
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in stats)
    assert not torch.allclose(before, params(ctx.policy))
    cov = coverage_logs(ctx)[0]["train/coverage"]
    assert 0 < cov <= 1


def test_self_sft_samples_once_and_reuses_the_set(make):
    ctx, method, trainer = make("self_sft", ["self_sft.samples=8"])
    first = method.data(ctx, 0)
    assert all(e.source == "self" for e in first.examples)
    assert len(first.examples) <= len(ctx.world.train_items)
    again = method.data(ctx, 1)
    assert again.examples is first.examples and len(coverage_logs(ctx)) == 1


def test_onpolicy_sft_resamples_every_epoch_and_keeps_the_optimizer(make):
    # batch 64 over <= 128 kept examples (~10 on micro): an epoch is at most 2 steps, so 4 steps span >= 2 epochs
    ctx, method, trainer = make("onpolicy_sft", ["onpolicy_sft.samples=8", "train.batch_size=64",
                                                               "train.micro_batch_size=64"])
    opt = trainer.opt
    train(ctx, method, trainer, 4)
    epochs = [s["train/epoch"] for s in coverage_logs(ctx)]
    assert len(epochs) >= 2 and epochs == list(range(len(epochs)))
    assert trainer.opt is opt and opt.state[next(iter(ctx.policy.parameters()))]["step"] == 4


@pytest.mark.parametrize("restart", [False, True])
def test_iterative_sft_rounds_restart_and_expert_round0(make, restart):
    ctx, method, trainer = make("iterative_sft", [
        "iterative_sft.samples=8", "iterative_sft.round0_data=expert", f"iterative_sft.restart_from_base={restart}",
        "train.max_steps=3"])
    expert = method.data(ctx, 0)
    assert expert.max_steps == 1 and {e.source for e in expert.examples} == {"expert"}
    events = []  # (what, optimizer step) in call order
    generate, reset, data = ctx.sampler.generate, ctx.reset_to_base, method.data
    ctx.sampler.generate = lambda *a, **k: (events.append(("sample", ctx.step)), generate(*a, **k))[1]
    ctx.reset_to_base = lambda **kw: (events.append(("reset", ctx.step)), reset(**kw))
    method.data = lambda c, p: (events.append(("round", p)), data(c, p))[1]
    train(ctx, method, trainer, 3)
    # max_steps=3, R=3: one step per round; round 0 trains on expert labels (no sampling); rounds 1 and 2
    # sample the latest model first, then (restart only) reset weights and optimizer to the base
    rst = lambda s: [("reset", s)] if restart else []
    assert events == [("round", 0), ("round", 1), ("sample", 1), *rst(1), ("round", 2), ("sample", 2), *rst(2)]
    assert [s["train/round"] for s in coverage_logs(ctx)] == [1.0, 2.0]
    assert method.data(ctx, 3) is None


@pytest.mark.parametrize("name", ["sft", "idft", "tms"])
def test_expert_label_filter_is_one_setting_of_sft_idft_and_tms(make, name):
    from harness.errors import HarnessError
    from methods._sft_family import ExpertLabelConfig, expert_items
    from harness.method import get_method
    assert issubclass(get_method(name).Config, ExpertLabelConfig)
    assert get_method(name).Config.model_fields["filter_labels"].default is True
    for keep_all, n in ((False, 3), (True, 4)):
        ctx, method, _ = make(name, [f"{name}.filter_labels={not keep_all}", "tms.checkpoints=1",
                                     "tms.teacher_steps=1"])
        items = ctx.world.train_items = ctx.world.train_items[:4]
        verify = ctx.world.verify
        ctx.world.verify = lambda it, r: 0.0 if it is items[0] and r == it.label else verify(it, r)  # noqa: B023
        prompts = {tuple(e.prompt_ids) for e in method.data(ctx, 0).examples}
        assert len(prompts) == n and (tuple(ctx.encode(items[0].prompt)) in prompts) == keep_all
    ctx.world.verify = lambda it, r: 0.0
    with pytest.raises(HarnessError, match="none of the 4 expert labels passes the verifier"):
        expert_items(ctx, True)
