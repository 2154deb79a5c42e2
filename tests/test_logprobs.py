"""Chunked log-probs, entropies and KL (harness.logprobs) against the unchunked [B, T, V] computation they replace."""
from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from harness.config import RunConfig, TrainConfig
from harness.data import Example, collate
from harness.engine import Trainer, forward, fused_adamw_available
from harness.errors import HarnessError
from harness import logprobs
from harness.logprobs import token_kl, token_logprobs
from harness.method import LossOutput, get_method, method_names

V = 50


def llama(seed: int = 0, vocab: int = V) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2))


def qwen(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                        tie_word_embeddings=True, pad_token_id=0))


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ex = []
    for i in range(n):
        P, R = 2 + i % 3, 3 + (i * 5) % 4                 # ragged prompts and responses -> right padding
        ids = torch.randint(3, V, (P + R,), generator=g).tolist()
        ex.append(Example(ids[:P], ids[P:], train_mask=[float(j % 3 != 1) for j in range(R)]))
    return collate(ex, 0)


def unchunked(model, b):
    """The pre-chunking computation: full [B, T-1, V] float32 log-softmax (the old engine forward and metrics)."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)                        # [B, T-1, V]
    logp = logprobs.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)             # [B, T-1]
    entropy = -(logprobs.exp() * logprobs).sum(-1)                              # [B, T-1]
    return logprobs, logp, entropy


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("make", [llama, qwen])
@pytest.mark.parametrize("chunk", [V, 7 * V, 10**9])   # one position per chunk, seven, everything in one
def test_chunked_logprobs_entropy_and_gradients_match_unchunked(make, chunk):
    b = batch()
    m_ref, m = make(), make()
    _, lp_ref, ent_ref = unchunked(m_ref, b)
    lp, ent = token_logprobs(m, b.input_ids, b.attention_mask, b.targets, b.response_mask, "grad", chunk)
    resp = b.response_mask > 0
    assert torch.allclose(lp[resp], lp_ref[resp], atol=1e-5)
    assert torch.allclose(ent[resp], ent_ref[resp], atol=1e-5)
    assert (lp[~resp] == 0).all() and (ent[~resp] == 0).all()
    # A loss using both, masked like the engine's: the gradients of every parameter agree.
    w = b.loss_mask
    (-(lp_ref * w).sum() - 0.1 * (ent_ref * w).sum()).backward()
    (-(lp * w).sum() - 0.1 * (ent * w).sum()).backward()
    assert torch.allclose(grads(m), grads(m_ref), atol=1e-5)


def test_detached_entropy_has_no_graph_and_leaves_logp_gradients_unchanged():
    b = batch()
    m_ref, m = llama(), llama()
    _, lp_ref, ent_ref = unchunked(m_ref, b)
    lp, ent = token_logprobs(m, b.input_ids, b.attention_mask, b.targets, b.response_mask, "detached", 3 * V)
    assert lp.requires_grad and not ent.requires_grad
    resp = b.response_mask > 0
    assert torch.allclose(ent[resp], ent_ref[resp], atol=1e-5)
    (-(lp_ref * b.loss_mask).sum()).backward()
    (-(lp * b.loss_mask).sum()).backward()
    assert torch.allclose(grads(m), grads(m_ref), atol=1e-5)
    assert token_logprobs(m, b.input_ids, b.attention_mask, b.targets, b.response_mask, "none")[1] is None


def test_one_chunk_is_bit_identical_to_the_unchunked_path_values_and_gradients():
    # The toy world's vocabulary fits one chunk: the same ops run, so toy results cannot move.
    b = batch()
    m_ref, m = llama(), llama()
    _, lp_ref, ent_ref = unchunked(m_ref, b)
    lp, ent = token_logprobs(m, b.input_ids, b.attention_mask, b.targets, b.response_mask, "grad")
    resp = b.response_mask > 0
    assert torch.equal(lp[resp], lp_ref[resp]) and torch.equal(ent[resp], ent_ref[resp])
    ((-lp_ref - 0.1 * ent_ref) * b.loss_mask).sum().backward()
    ((-lp - 0.1 * ent) * b.loss_mask).sum().backward()
    assert torch.equal(grads(m), grads(m_ref))


def old_forward(model, batch, precision="fp32", entropy_grad=False):
    _, batch.logp, batch.entropy = unchunked(model, batch)


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_engine_updates_are_bit_identical_to_the_unchunked_engine(monkeypatch, entropy_coef):
    ex = batch(8).examples

    def loss(ctx, b):  # an NLL plus an entropy bonus, like TRAPO's
        return LossOutput(-b.logp - entropy_coef * b.entropy)
    params = []
    for fwd in (old_forward, forward):
        monkeypatch.setattr("harness.engine.forward", fwd)
        model = llama()
        tr = Trainer(model, 0, TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=4, max_steps=3, warmup_ratio=0.0))
        stats = [tr.update(ex, loss, None, "token", entropy_grad=entropy_coef > 0) for _ in range(3)]
        params.append((torch.cat([p.detach().flatten() for p in model.parameters()]), stats))
    assert torch.equal(params[0][0], params[1][0])
    assert params[0][1] == params[1][1]  # loss, grad norm, φ statistics


@torch.no_grad()
def old_metrics(policy, base, prompts, responses, batch_size):
    """metrics.sequence_nll (per token) of `base` and metrics.kl_to_base as they were before chunking."""
    from harness.metrics import _response_batches
    nll, kl = [], []
    for b in _response_batches(prompts, responses, batch_size, 0, torch.device("cpu")):
        lp0_all, lp0, _ = unchunked(base, b)
        lp_all, _, _ = unchunked(policy, b)
        nll.append((-(lp0 * b.response_mask).sum(-1) / b.response_mask.sum(-1)).double().numpy())
        p0 = lp0_all.exp()
        k = torch.where(p0 > 0, p0 * (lp0_all - lp_all), torch.zeros_like(p0)).sum(-1)
        kl.append((k * b.response_mask).sum(-1).double().numpy())
    return np.concatenate(nll), float(np.mean(np.concatenate(kl)))


@pytest.mark.parametrize("chunk", [10**9, 2 * V])
def test_reference_logp_and_metrics_match_unchunked(monkeypatch, chunk):
    from harness import logprobs
    from harness.metrics import kl_to_base, sequence_nll
    from methods.common import reference_logp
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk)
    b = batch()
    policy, base = llama(0), llama(1)
    with torch.no_grad():
        _, lp0, _ = unchunked(base, b)
    prompts = [e.prompt_ids for e in b.examples]
    responses = [e.response_ids for e in b.examples]
    nll_ref, kl_ref = old_metrics(policy, base, prompts, responses, 4)
    resp = b.response_mask > 0
    ref, nll, kl = (reference_logp(base, b), sequence_nll(base, prompts, responses, 4, 0),
                    kl_to_base(policy, base, prompts, responses, 4, 0))
    if chunk > 10**8:  # one chunk: bit for bit what the unchunked code computed
        assert torch.equal(ref[resp], lp0[resp]) and np.array_equal(nll, nll_ref) and kl == kl_ref
    assert torch.allclose(ref[resp], lp0[resp], atol=1e-5) and (ref[~resp] == 0).all()
    assert nll == pytest.approx(nll_ref, abs=1e-5)
    assert kl == pytest.approx(kl_ref, abs=1e-5)


def test_token_kl_chunked_matches_and_is_zero_against_itself():
    b = batch()
    p, q = llama(0), llama(1)
    full = token_kl(p, q, b.input_ids, b.attention_mask, b.response_mask)
    chunked = token_kl(p, q, b.input_ids, b.attention_mask, b.response_mask, chunk_elements=3 * V)
    assert torch.allclose(full, chunked, atol=1e-6) and (full[b.response_mask > 0] > 0).all()
    assert token_kl(p, p, b.input_ids, b.attention_mask, b.response_mask, chunk_elements=V).abs().max() < 1e-6


class ScaledHead(LlamaForCausalLM):
    """A model whose logits are not head(decoder(x)) (a logit scale, like Cohere's or Granite's)."""

    def forward(self, *args, **kw):
        out = super().forward(*args, **kw)
        out.logits = out.logits * 0.5
        return out


def test_models_that_cannot_be_split_fall_back_to_their_own_logits():
    cfg = llama().config
    torch.manual_seed(0)
    m = ScaledHead(cfg)
    b = batch()
    _, lp_ref, _ = unchunked(m, b)
    lp, _ = token_logprobs(m, b.input_ids, b.attention_mask, b.targets, b.response_mask, "detached", 2 * V)
    resp = b.response_mask > 0
    assert torch.allclose(lp[resp], lp_ref[resp], atol=1e-5)

    class Bare(torch.nn.Module):  # no get_decoder at all (a DDP-like wrapper)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)
    lp2, _ = token_logprobs(Bare(m), b.input_ids, b.attention_mask, b.targets, b.response_mask, "none", 2 * V)
    assert torch.allclose(lp2, lp)


def test_only_trapo_differentiates_the_entropy():
    # IDFT uses H only inside the detached φ, GRPO logs it; TRAPO's entropy bonus needs its gradient.
    assert {n for n in method_names() if get_method(n).needs_entropy_grad} == {"trapo"}


def test_batch_sizes_default_to_eval_batch_size_and_can_be_set_apart():
    cfg = RunConfig.model_validate({"eval": {"batch_size": 64}})
    assert (cfg.eval.batch_size, cfg.rollout_batch_size, cfg.score_batch_size) == (64, 64, 64)
    cfg = RunConfig.model_validate({"eval": {"batch_size": 64, "score_batch_size": 8},
                                    "train": {"rollout_batch_size": 16}})
    assert (cfg.eval.batch_size, cfg.rollout_batch_size, cfg.score_batch_size) == (64, 16, 8)


def test_gradient_checkpointing_and_fused_adamw_keep_the_update():
    ex = batch(8).examples

    def nll(ctx, b):
        return LossOutput(-b.logp)
    out = []
    for kw in ({}, {"gradient_checkpointing": True}, {"fused_adamw": True}):
        model = llama()
        tr = Trainer(model, 0, TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=8, max_steps=2, warmup_ratio=0.0,
                                           **kw))
        for _ in range(2):
            tr.update(ex, nll, None)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert torch.allclose(out[0], out[2], atol=1e-5)
    assert isinstance(fused_adamw_available("cpu"), bool)


def test_load_dtype(tmp_path):
    from harness.modeling import build_char_tokenizer, load_model
    llama().save_pretrained(tmp_path)
    build_char_tokenizer("abc").save_pretrained(tmp_path)
    m, _ = load_model(str(tmp_path), dtype="bfloat16")
    assert next(m.parameters()).dtype == torch.bfloat16
    assert next(load_model(str(tmp_path))[0].parameters()).dtype == torch.float32
    with pytest.raises(HarnessError, match="unknown load dtype"):
        load_model(str(tmp_path), dtype="float8")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_scoring_keeps_the_update_and_leaves_sampling_eager():
    ex = [batch(8).examples, batch(6, seed=2).examples]  # two padded lengths: one dynamic-shape graph serves both

    def nll(ctx, b):
        return LossOutput(-b.logp)
    out = []
    for kw in ({}, {"compile": True}):
        model = llama()
        tr = Trainer(model, 0, TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=4, max_steps=3, warmup_ratio=0.0,
                                           **kw))
        for step in range(3):
            tr.update(ex[step % 2], nll, None)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        decoder = logprobs._SPLITS[model][0]
        assert isinstance(decoder, torch._dynamo.eval_frame.OptimizedModule) == bool(kw)
        assert model.get_decoder() is (decoder._orig_mod if kw else decoder)  # generate() still runs the eager one
    assert torch.allclose(out[0], out[1], atol=1e-5)
