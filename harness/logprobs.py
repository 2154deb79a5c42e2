"""Target log-probs, entropies and KL over the vocabulary, without a [B, T, V] float32 tensor.

At Qwen's vocabulary (V = 151,936) one float32 row of logits is 0.6 MB, and the
full log-softmax of a batch (logits, log-probs, their exp, the entropy product,
the same again in the backward) cost ~3 MB per token. Here the model runs up
to its final hidden states [B, T, H] once, and its output head is applied to
chunks of at most `chunk_elements // V` response positions at a time. With
gradients, each chunk runs under activation checkpointing: autograd keeps only
the chunk's hidden states and recomputes its logits in the backward, so
vocabulary-sized memory is a few chunks however long the batch.

A batch that fits in one chunk (the toy world's vocabulary of a few dozen
characters) runs the very ops of the unchunked path, so toy results are
identical bit for bit. A model that cannot be split into decoder and head (a
wrapper without `get_decoder`, a head that scales or soft-caps its logits) is
detected once and falls back to its full logits, still scored chunk by chunk.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator, Literal

import torch
from torch.utils.checkpoint import checkpoint

# One chunk's float32 logits: 64 MB, i.e. 110 positions at V = 151,936. A backward holds ~6 such buffers.
CHUNK_ELEMENTS = 1 << 24

EntropyMode = Literal["none", "detached", "grad"]

# The attribute under which a model may carry its own decoder entry point, used in place of `get_decoder()`:
# harness.fsdp's runs the decoder inside the FSDP root's hooks, which gather the root's embeddings and head.
SCORING_DECODER = "scoring_decoder"
# model -> (decoder, head, V), or None where the model's logits are not head(decoder(x)).
_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# models whose decoder is scored through torch.compile (train.compile); generation keeps the eager modules.
_COMPILE: weakref.WeakSet = weakref.WeakSet()


def compile_scoring(model: torch.nn.Module) -> None:
    """Score (and train) `model` through a torch.compile'd decoder from now on; sampling stays eager.

    Compiled with dynamic shapes: every step's padded length differs. Where the model cannot be split into
    decoder and head, the whole model is scored uncompiled.
    """
    _COMPILE.add(model)
    forget(model)  # split again, compiled


def forget(model: torch.nn.Module) -> None:
    """Split `model` again at its next scoring: its modules changed (compiled, or sharded by harness.fsdp)."""
    _SPLITS.pop(model, None)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own mode (a frozen part may differ)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _split(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(decoder, head, V) when head(decoder(x)) reproduces the model's logits, else None; checked once per model."""
    if model in _SPLITS:
        return _SPLITS[model]
    parts = None
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if callable(get_decoder) and callable(get_head):
        try:
            decoder, head = getattr(model, SCORING_DECODER, None) or get_decoder(), get_head()
        except (AttributeError, NotImplementedError, ValueError):
            decoder = head = None
        if decoder is not None and head is not None and decoder is not model:
            n = int(attention_mask[0].sum().clamp(min=1, max=8))
            ids, attn = input_ids[:1, :n], attention_mask[:1, :n]
            # Eval mode: no dropout, so the check consumes no random numbers and cannot shift a seeded run. Autocast
            # off: casts of FSDP2's gathered weights made here, without gradient, stay in the autocast cache of an
            # enclosing region, and the training forward that follows in it would reuse them and lose their gradients.
            with torch.no_grad(), eval_mode(model), torch.autocast(input_ids.device.type, enabled=False):
                full = model(input_ids=ids, attention_mask=attn).logits.float()
                mine = head(_last_hidden(decoder(input_ids=ids, attention_mask=attn, use_cache=False))).float()
            if mine.shape == full.shape and torch.allclose(mine, full, rtol=1e-4, atol=1e-4):
                parts = (decoder, head, int(full.shape[-1]))
    if parts is not None and model in _COMPILE:
        parts = (torch.compile(parts[0], dynamic=True), *parts[1:])
    _SPLITS[model] = parts
    return parts


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _states(model: torch.nn.Module, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], int]:
    """(states [B, T, D], head mapping states to logits, V): hidden states and the output head, or logits and identity."""
    parts = _split(model, input_ids, attention_mask)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits, (lambda x: x), int(logits.shape[-1])
    decoder, head, vocab = parts
    return _last_hidden(decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)), head, vocab


def _entropy(logp: torch.Tensor, mode: EntropyMode) -> torch.Tensor | None:
    if mode == "none":
        return None
    with torch.no_grad() if mode == "detached" else contextlib.nullcontext():
        return -(logp.exp() * logp).sum(-1)


def _chunk(head: Callable, h: torch.Tensor, t: torch.Tensor, mode: EntropyMode):
    logp = torch.log_softmax(head(h).float(), dim=-1)                       # [C, V]
    return logp.gather(-1, t.unsqueeze(-1)).squeeze(-1), _entropy(logp, mode)  # [C], [C]


def _positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat, row and column indices of the positions where mask > 0."""
    flat = (mask.reshape(-1) > 0).nonzero().squeeze(-1)
    return flat, flat // mask.shape[1], flat % mask.shape[1]


def _scatter(values: torch.Tensor, flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return values.new_zeros(shape.numel()).index_put((flat,), values).view(shape)


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   targets: torch.Tensor, mask: torch.Tensor, entropy: EntropyMode = "none",
                   chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `targets` and entropies ([B, T-1] each) where `mask` > 0, zero elsewhere.

    Gradients flow into the log-probs when grad mode is on; into the entropies
    only with entropy="grad" ("detached" computes them under no_grad, "none" skips them).
    `chunk_elements`: the most logits held per chunk (default CHUNK_ELEMENTS).
    """
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    states, head, vocab = _states(model, input_ids, attention_mask)
    keep = mask > 0
    if targets.numel() * vocab <= chunk_elements:
        # One chunk: exactly the unchunked ops (head on all positions, then slice), so results match bit for bit.
        logp = torch.log_softmax(head(states)[:, :-1].float(), dim=-1)      # [B, T-1, V]
        lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)              # [B, T-1]
        ent = _entropy(logp, entropy)
        zero = lp.new_zeros(())
        return torch.where(keep, lp, zero), (None if ent is None else torch.where(keep, ent, zero))
    flat, rows, cols = _positions(mask)
    h, t = states[rows, cols], targets[rows, cols]                           # [N, D], [N]
    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in _params(head)))
    size = max(1, chunk_elements // vocab)
    lps, ents = [], []
    for s in range(0, len(flat), size):
        if grad:
            lp_c, ent_c = checkpoint(_chunk, head, h[s:s + size], t[s:s + size], entropy, use_reentrant=False)
        else:
            lp_c, ent_c = _chunk(head, h[s:s + size], t[s:s + size], entropy)
        lps.append(lp_c)
        ents.append(ent_c)
    shape = targets.shape
    if not lps:  # no response token: zeros still tied to the graph, so a loss built on them can backpropagate
        zero = states.new_zeros(shape, dtype=torch.float32) + 0.0 * states.sum()
        return zero, (None if entropy == "none" else zero.detach().clone())
    lp = _scatter(torch.cat(lps), flat, shape)
    return lp, (None if entropy == "none" else _scatter(torch.cat(ents), flat, shape))


@torch.no_grad()
def token_greedy(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 targets: torch.Tensor, mask: torch.Tensor,
                 chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` [B, T-1] and whether each target is the argmax token [B, T-1], where `mask` > 0.

    What lm-eval's loglikelihood requests return (summed log-prob, is_greedy); chunked like `token_logprobs`.
    """
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    states, head, vocab = _states(model, input_ids, attention_mask)
    flat, rows, cols = _positions(mask)
    h, t = states[rows, cols], targets[rows, cols]                           # [N, D], [N]
    size = max(1, chunk_elements // vocab)
    lps, hits = [], []
    for s in range(0, len(flat), size):
        logp = torch.log_softmax(head(h[s:s + size]).float(), dim=-1)       # [C, V]
        lps.append(logp.gather(-1, t[s:s + size].unsqueeze(-1)).squeeze(-1))
        hits.append((logp.argmax(-1) == t[s:s + size]).float())
    if not lps:
        zero = torch.zeros(mask.shape, device=mask.device)
        return zero, zero.clone()
    return _scatter(torch.cat(lps), flat, mask.shape), _scatter(torch.cat(hits), flat, mask.shape)


def token_kl(p_model: torch.nn.Module, q_model: torch.nn.Module, input_ids: torch.Tensor,
             attention_mask: torch.Tensor, mask: torch.Tensor, chunk_elements: int | None = None) -> torch.Tensor:
    """KL(p(.|x_<=t) || q(.|x_<=t)) [B, T-1], exact over the vocabulary, where `mask` > 0 (zero elsewhere); no gradient."""
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    with torch.no_grad():
        ps, p_head, vocab = _states(p_model, input_ids, attention_mask)
        qs, q_head, _ = _states(q_model, input_ids, attention_mask)
        keep = mask > 0
        if mask.numel() * vocab <= chunk_elements:
            kl = _kl(torch.log_softmax(p_head(ps)[:, :-1].float(), -1), torch.log_softmax(q_head(qs)[:, :-1].float(), -1))
            return torch.where(keep, kl, kl.new_zeros(()))
        flat, rows, cols = _positions(mask)
        p_h, q_h = ps[rows, cols], qs[rows, cols]                            # [N, D] each
        size = max(1, chunk_elements // vocab)
        kls = [_kl(torch.log_softmax(p_head(p_h[s:s + size]).float(), -1),
                   torch.log_softmax(q_head(q_h[s:s + size]).float(), -1)) for s in range(0, len(flat), size)]
        if not kls:
            return torch.zeros(mask.shape, device=mask.device)
        return _scatter(torch.cat(kls), flat, mask.shape)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q) over the last axis; overwrites `logq` (fewer vocabulary-sized temporaries)."""
    p = logp.exp()
    d = logq.neg_().add_(logp).mul_(p)  # bit for bit p * (logp - logq)
    # 0 * log 0 = 0: tokens p rules out (p == 0, log p = -inf) contribute nothing.
    return d.masked_fill_(p.gt(0).logical_not_(), 0.0).sum(-1)


def _params(module) -> list[torch.nn.Parameter]:
    return list(module.parameters()) if isinstance(module, torch.nn.Module) else []


def phi(logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """DDT's per-token in-distribution score φ = log p(y_t) + H_t (detached): ≈ 0 on-policy, very negative off it."""
    return (logp + entropy).detach()
