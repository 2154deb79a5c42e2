"""lm-eval evaluation of a live model on the micro world: agreement with a plain loop, determinism, no side effects."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.world import ToyWorld, WorldConfig
from harness.config import world_presets
from harness.errors import HarnessError
from harness.evaluation import Evaluator, LiveLM, greedy_generate


@pytest.fixture(scope="module")
def evaluator(micro_world):
    world, _, tok = micro_world
    return Evaluator(world, tok)


def test_lm_eval_matches_plain_loop(micro_world, evaluator):
    world, model, _ = micro_world
    a, b = evaluator.evaluate(model), evaluator.plain_evaluate(model)
    assert list(a.acc) == world.cfg.tasks
    assert a.acc == b.acc
    for t, items in world.eval_items.items():
        assert a.responses[t] == b.responses[t]
        np.testing.assert_array_equal(a.correct[t], b.correct[t])
        # Per-example results are in world.eval_items order and scored by the world's verifier.
        assert len(a.correct[t]) == len(items) == world.cfg.n_eval
        assert a.correct[t].tolist() == [world.verify(it, r) for it, r in zip(items, a.responses[t])]
        assert a.acc[t] == pytest.approx(100.0 * a.correct[t].mean())
    # The micro base knows its retention tasks: a broken prompt format would score ~0 everywhere.
    assert max(a.acc.values()) > 50


def test_evaluate_twice_is_identical(micro_world, evaluator):
    model = micro_world[1]
    a, b = evaluator.evaluate(model), evaluator.evaluate(model)
    assert a.acc == b.acc and a.responses == b.responses


def test_evaluate_leaves_rng_and_modes_alone(micro_world, evaluator):
    model = micro_world[1]
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    model.train()
    model.model.embed_tokens.eval()  # a submodule in its own mode must keep it
    try:
        evaluator.evaluate(model)
        assert model.training and model.lm_head.training and not model.model.embed_tokens.training
    finally:
        model.eval()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))


def test_evaluation_uses_the_world_verifier(micro_world):
    _, model, tok = micro_world
    cfg = WorldConfig(name="micro", **world_presets("toy")["micro"]["world"])
    world = ToyWorld(cfg)
    world.verify = lambda item, response: 1.0  # the function training rewards call
    res = Evaluator(world, tok).evaluate(model)
    assert res.acc == {t: 100.0 for t in cfg.tasks}


def test_empty_eval_split_raises(micro_world):
    tok = micro_world[2]
    with pytest.raises(HarnessError, match="empty evaluation split"):  # the World refuses n_eval = 0 itself ...
        Evaluator(ToyWorld(WorldConfig(name="micro", **{**world_presets("toy")["micro"]["world"], "n_eval": 0})), tok)
    world = ToyWorld(WorldConfig(name="micro", **world_presets("toy")["micro"]["world"]))
    world.__dict__["eval_items"] = {**world.eval_items, "add": []}  # ... and the Evaluator any empty task split
    with pytest.raises(HarnessError, match="'add' has an empty eval split"):
        Evaluator(world, tok)


def test_greedy_generate_batching_and_stop_strings(micro_world):
    world, model, tok = micro_world
    prompts = [it.prompt for t in ("add", "sort") for it in world.eval_items[t][:12]]
    one = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=1)
    assert greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=7) == one  # left padding is exact
    cut = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=7, stop=["5"])
    assert cut == [r.split("5")[0] for r in one]
    assert any("5" in r for r in one)  # the stop string did occur, so the cut was exercised


def test_live_lm_refuses_sampling(micro_world):
    _, model, tok = micro_world
    req = SimpleNamespace(args=("add:12345=", {"until": ["\n"], "max_gen_toks": 4, "do_sample": True}))
    with pytest.raises(HarnessError, match="greedily"):
        LiveLM(model, tok, batch_size=4).generate_until([req])
