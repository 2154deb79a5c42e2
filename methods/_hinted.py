"""Hinted Decoding (Zhang et al., arXiv 2602.12222, §6c of METHODS.md): private module of `idft`.

One model, two contexts decoded in lock-step. The *hinted* stream p sees a hint
holding the reference solution before the prompt; the *plain* stream q sees the
prompt alone (the on-policy context). The first token comes from p alone; then
each token is drawn from the renormalised geometric mixture
    log m = (1 − λ) log p + λ log q,   λ = clip(β · H(p)/log|V|, 0, 1),
so the answer-aware stream steers where it is confident and the model's
unhinted style dominates where it is not. Every token is appended to both
contexts; once a token containing the answer delimiter is emitted the row
continues from q alone, so the hint cannot force a right answer after wrong
reasoning. Decoding is batched with one KV cache per stream.
Deviations from `HintedDecoding/sampling/hinted_decoding.py`: batched instead
of one example at a time; no n-gram repetition stop (responses here are ≤
`max_new_tokens` tokens); EOS also ends a row on its first token; the toy hint
is a context prefix (`hint_template`), not a chat instruction with a first-pass
"# Analyze … # CoT" prefix (the toy model follows no instructions).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from harness.data import Example, collate
from harness.engine import forward
from harness.errors import HarnessError
from harness.greedy import cache_argument
from harness.logprobs import phi
from methods.common import correct_examples, masked_mean, sample_and_verify


class _Stream:
    """One context batch with its KV cache: left-padded prefill, then one token per step."""

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], pad_id: int):
        self.model, device = model, next(model.parameters()).device
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
        self.attn = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):] = torch.tensor(p)
            self.attn[i, T - len(p):] = 1
        ids, self.attn = ids.to(device), self.attn.to(device)
        pos = (self.attn.cumsum(-1) - 1).clamp(min=0)                             # [B, T] positions ignore padding
        self.cache, self.key = DynamicCache(), cache_argument(model)
        out = model(input_ids=ids, attention_mask=self.attn, position_ids=pos, use_cache=True,
                    **{self.key: self.cache})
        self.logits = out.logits[:, -1].float()                                   # [B, V]
        self.next_pos = self.attn.sum(-1, keepdim=True)                           # [B, 1]

    def step(self, tokens: torch.Tensor) -> None:
        """Append one token per row ([B]) and refresh the next-token logits."""
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=self.next_pos,
                         use_cache=True, **{self.key: self.cache})                # the cache grows in place
        self.logits = out.logits[:, -1].float()
        self.next_pos = self.next_pos + 1


def mix_weight(log_p: torch.Tensor, beta: float) -> torch.Tensor:
    """λ = clip(β · H(p)/log|V|, 0, 1) per row; log_p: [B, V] log-probs of the hinted stream -> [B]."""
    H = -(log_p.exp() * log_p).sum(-1)                                            # [B] entropy in nats
    return (beta * H / math.log(log_p.shape[-1])).clamp(0.0, 1.0)


def sample_token(scores: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """Nucleus sampling from unnormalised log-scores [B, V] -> [B]; temperature ≤ 0 is greedy.

    As the released LogitsProcessor: the top-p set is chosen on softmax(scores), then temperature applies.
    """
    if temperature <= 0:
        return scores.argmax(-1)
    sorted_s, idx = scores.sort(-1, descending=True)                             # [B, V]
    cum = sorted_s.softmax(-1).cumsum(-1)
    drop = cum > top_p
    drop[:, 1:] = drop[:, :-1].clone()                                            # keep the token crossing top_p
    drop[:, 0] = False
    sorted_s = sorted_s.masked_fill(drop, float("-inf"))
    probs = (sorted_s / temperature).softmax(-1)
    return idx.gather(-1, torch.multinomial(probs, 1, generator=gen)).squeeze(-1)


@torch.no_grad()
def hinted_decode(model: torch.nn.Module, hinted: list[list[int]], plain: list[list[int]], *, beta: float,
                  temperature: float, top_p: float, max_new_tokens: int, eos_id: int, pad_id: int,
                  switch_ids: set[int], gen: torch.Generator | None = None) -> tuple[list[list[int]], list[bool], int]:
    """Lock-step two-context decoding of one batch. Returns (responses incl. EOS, finished flags, tokens fed).

    `switch_ids`: tokens containing the answer delimiter (after one, the row follows the plain stream only).
    The token count is the decoding cost: 2 per token while both streams are live, 1 once plain-only.
    """
    B = len(hinted)
    hs, qs = _Stream(model, hinted, pad_id), _Stream(model, plain, pad_id)
    device = hs.logits.device
    switch = torch.tensor(sorted(switch_ids) or [-1], device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    plain_only = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(B)]
    fed = 0
    for t in range(max_new_tokens):
        log_p, log_q = F.log_softmax(hs.logits, -1), F.log_softmax(qs.logits, -1)  # [B, V] each
        lam = mix_weight(log_p, beta) if t > 0 else torch.zeros(B, device=device)  # first token: hinted alone
        lam = torch.where(plain_only, torch.ones_like(lam), lam)                   # [B]
        scores = (1 - lam)[:, None] * log_p + lam[:, None] * log_q                 # [B, V] geometric mixture
        x = sample_token(scores, temperature, top_p, gen)                          # [B]
        x = torch.where(done, torch.full_like(x, pad_id), x)
        fed += int((~done & plain_only).sum()) + 2 * int((~done & ~plain_only).sum())
        for i in (~done).nonzero().flatten().tolist():
            out[i].append(int(x[i]))
        done |= x == eos_id
        plain_only |= torch.isin(x, switch)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        qs.step(x)
        if not bool((done | plain_only).all()):  # the hinted stream is only needed while some row mixes
            hs.step(x)
    return out, [eos_id in r for r in out], fed


def delimiter_ids(tokenizer, delimiter: str) -> set[int]:
    """Token ids whose text contains the answer delimiter."""
    return {i for i in range(len(tokenizer)) if delimiter in tokenizer.decode([i])}


@torch.no_grad()
def mean_phi(model: torch.nn.Module, examples: list[Example], pad_id: int, batch_size: int = 256) -> float:
    """Mean over response tokens of φ = log p + H under `model` (the engine's `data_phi`)."""
    tot, n = 0.0, 0.0
    was_training = model.training
    model.eval()
    for s in range(0, len(examples), batch_size):
        batch = collate(examples[s:s + batch_size], pad_id, next(model.parameters()).device)
        forward(model, batch)
        m = batch.loss_mask.sum().item()
        tot += float(masked_mean(phi(batch.logp, batch.entropy), batch.loss_mask)) * m
        n += m
    model.train(was_training)
    return tot / max(n, 1.0)


def hinted_examples(ctx, cfg) -> list[Example]:
    """HD data (paper pipeline): own verified answers; Hinted Decoding for the failures; keep verified ones.

    cfg: the idft config (`hint_template`, `hd_beta`, `hd_temperature`, `hd_top_p`, `hd_delimiter`,
    `hd_batch_size`). Logs own_correct, hd_accepted, coverage and mean φ of each part under the plain context.
    """
    items, tok, model = ctx.world.train_items, ctx.tokenizer, ctx.policy
    sampled = sample_and_verify(ctx, items, 1, cfg.hd_temperature, top_p=cfg.hd_top_p)
    own = correct_examples(ctx, sampled, per_prompt=1, source="self")
    failed = [s.item for s in sampled if not any(r > 0 for r in s.rewards)]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(int(ctx.rng.integers(2**31)))
    switch = delimiter_ids(tok, cfg.hd_delimiter)
    hd: list[Example] = []
    start, fed, was_training = time.perf_counter(), 0, model.training
    model.eval()
    try:
        for s in range(0, len(failed), cfg.hd_batch_size):
            chunk = failed[s:s + cfg.hd_batch_size]
            plain = [ctx.encode(it.prompt) for it in chunk]
            hinted = [ctx.encode(cfg.hint_template.format(label=it.label, answer=it.answer, prompt=it.prompt))
                      for it in chunk]
            if tok.unk_token_id is not None and any(tok.unk_token_id in h for h in hinted):
                raise HarnessError(f"idft.hint_template={cfg.hint_template!r} yields tokens the tokenizer does not "
                                   f"know; use only characters that occur in prompts and labels")
            resp, finished, n = hinted_decode(
                model, hinted, plain, beta=cfg.hd_beta, temperature=cfg.hd_temperature, top_p=cfg.hd_top_p,
                max_new_tokens=ctx.world.max_new_tokens, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                switch_ids=switch, gen=gen)
            fed += n
            made = sum(map(len, resp))
            # The plain stream costs what sampling would; the hinted stream (prefill + its steps) is HD's extra.
            ctx.cost.add("prefill", sum(map(len, plain)))
            ctx.cost.add("gen", made)
            ctx.cost.add("hinted", sum(map(len, hinted)) + n - made)
            for it, p, r, f in zip(chunk, plain, resp, finished):
                if f and ctx.world.verify(it, tok.decode(r, skip_special_tokens=True)) > 0:
                    hd.append(Example(p, r, task=it.task, source="hinted"))
    finally:
        model.train(was_training)
        ctx.sampler.gen_seconds += time.perf_counter() - start
    expert = [ctx.example(it.prompt, it.label, task=it.task, source="expert") for it in items]
    pad = tok.pad_token_id
    phis = {f"hd/phi_{k}": mean_phi(model, v, pad, ctx.score_batch_size) for k, v in
            [("own", own), ("hinted", hd), ("data", own + hd), ("expert", expert)] if v}
    ctx.log({"hd/own_correct": float(len(own)), "hd/tried": float(len(failed)), "hd/accepted": float(len(hd)),
             "hd/coverage": (len(own) + len(hd)) / max(1, len(items)), "hd/gen_tokens": float(fed), **phis})
    return own + hd
