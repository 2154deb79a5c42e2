"""HFSampler's own sampling loop: per-row draws that follow generate's distribution and do not depend on the batch.

Hand-checkable pieces (the nucleus filter against transformers' warper, inverse-CDF draws against the softmax,
per-row uniforms against their keys), then the sampler on the micro world's base: same seed and keys give the same
samples at any batch size, other seeds give other samples, and a model whose generation config adds a logits
processor is still sampled by `generate`.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from harness.sampler import HFSampler, RowDraws, row_uniforms, top_p_filter


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_filter_is_transformers_warper(top_p):
    scores = torch.randn(64, 37, generator=torch.Generator().manual_seed(0)) * 3
    ours = top_p_filter(scores, top_p)
    theirs = TopPLogitsWarper(top_p)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[~torch.isinf(ours)], scores[~torch.isinf(ours)])


def test_top_p_filter_by_hand():
    # probs 0.5, 0.3, 0.2 (ascending 0.2, 0.3, 0.5 -> cumulative 0.2, 0.5, 1.0): top_p 0.75 drops cumulative ≤ 0.25
    scores = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.isinf(top_p_filter(scores, 0.75)).tolist() == [[False, False, True]]
    assert torch.isinf(top_p_filter(scores, 0.45)).tolist() == [[False, True, True]]  # drops cumulative ≤ 0.55
    assert torch.isinf(top_p_filter(scores, 0.01)).tolist() == [[False, True, True]]  # the top token always stays


def test_inverse_cdf_draws_by_hand():
    # probs 0.5, 0.3, 0.2: u < 0.5 -> 0, 0.5 ≤ u < 0.8 -> 1, u ≥ 0.8 -> 2
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(5, 3)
    u = torch.tensor([[0.0], [0.49], [0.51], [0.79], [0.999999]])
    assert RowDraws(u, 1.0, 1.0)(logits, torch.arange(5), 0).tolist() == [0, 0, 1, 1, 2]
    # a zero-probability last token is never drawn, even when u rounds up to the total
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert RowDraws(torch.tensor([[1.0]]), 1.0, 1.0)(logits, torch.arange(1), 0).tolist() == [1]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_draws_follow_generates_distribution(temperature, top_p):
    n = 40_000
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0])
    want = top_p_filter((logits / temperature)[None], top_p).softmax(-1)[0]
    u = row_uniforms([(7, "t", 0, i, 0) for i in range(n)], 1)
    tok = RowDraws(u, temperature, top_p)(logits.expand(n, 5), torch.arange(n), 0)
    freq = torch.bincount(tok, minlength=5).float() / n
    sd = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 4 * sd + 1e-9).all(), (freq, want)


def test_row_uniforms_depend_on_their_key_only():
    a = row_uniforms([(0, "", 0, 3, 1), (0, "", 0, 4, 0)], 6)
    b = row_uniforms([(0, "", 0, 4, 0)], 6)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert ((a >= 0) & (a < 1)).all()


def _sample(model, tok, prompts, batch_size, seed=0, n=3):
    s = HFSampler(model, tok, batch_size=batch_size, seed=seed)
    return [[c.response_ids for c in row] for row in s.generate(prompts, n=n, temperature=1.0, max_new_tokens=10)]


def test_samples_do_not_depend_on_batch_size_and_follow_the_seed(micro_world):
    world, model, tok = micro_world
    prompts = [tok.encode(it.prompt, add_special_tokens=False) for items in world.eval_items.values()
               for it in items[:4]]
    assert len({len(p) for p in prompts}) > 1  # mixed lengths: left padding differs between batch sizes
    one = _sample(model, tok, prompts, batch_size=1)
    assert _sample(model, tok, prompts, batch_size=7) == one == _sample(model, tok, prompts, batch_size=64)
    assert _sample(model, tok, prompts, batch_size=64, seed=1) != one
    # sampling rows of equal prompts differ (their keys differ), and the second call draws afresh
    s = HFSampler(model, tok, batch_size=64, seed=0)
    first = s.generate(prompts[:1], n=8, temperature=1.0, max_new_tokens=10)[0]
    again = s.generate(prompts[:1], n=8, temperature=1.0, max_new_tokens=10)[0]
    assert len({tuple(c.response_ids) for c in first}) > 1
    assert [c.response_ids for c in first] != [c.response_ids for c in again]
    eos = tok.eos_token_id
    for c in first + again:
        assert c.finished == (c.response_ids[-1] == eos) and eos not in c.response_ids[:-1]


def test_a_logits_processor_in_the_generation_config_falls_back_to_generate(micro_world, monkeypatch):
    world, model, tok = micro_world
    model = copy.deepcopy(model)
    model.generation_config.repetition_penalty = 1.3
    calls = []
    real = type(model).generate
    monkeypatch.setattr(type(model), "generate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    prompts = [tok.encode(world.eval_items[world.target][0].prompt, add_special_tokens=False)]
    out = HFSampler(model, tok, seed=0).generate(prompts, n=2, temperature=1.0, max_new_tokens=6)
    assert calls and len(out[0]) == 2
