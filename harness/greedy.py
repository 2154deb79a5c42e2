"""Greedy decoding for evaluation: batches sorted longest first, cut at stop strings.

A batch is decoded by `decode_dropping_finished` (rows that ended leave the batch, so it no longer runs until its
longest answer at full width) unless the model's generation config asks for a logits processor that greedy
decoding must apply (a repetition penalty, say), in which case transformers' `generate` decodes it.

Split out of harness/evaluation.py, whose lm-eval wrapper (`LiveLM`) and plain loop both call
`greedy_generate`, so the two paths differ only by lm-eval's machinery.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Any, Callable

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from harness.errors import HarnessError

STOP = ["\n"]


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """End tokens: the model's generation config (may list several, e.g. Qwen) plus the tokenizer's eos."""
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if gen_eos is None else ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class _StopOnStrings(StoppingCriteria):
    """Per-row stop once the decoded response contains a stop string.

    transformers' own `stop_strings` raises when a stop string has characters
    outside the vocabulary (the toy vocabulary has no newline), so we check text.
    Rows already stopped, or already ended by an end token, are not decoded again:
    generate ignores the criterion for finished rows (`unfinished & ~done`), so
    skipping them changes no output.
    """

    def __init__(self, tokenizer, stop: list[str], prompt_len: int, eos_ids: list[int] | None = None):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len
        self.eos = torch.tensor(sorted(set(eos_ids or [])), dtype=torch.long)
        self.done: torch.Tensor | None = None  # rows whose text already contains a stop string
        # A stop string that first appears at this step ends in the newest token, so it lies in the last
        # len(s) characters, i.e. in at most len(s) tokens (a token decodes to at least one character);
        # doubled, plus slack, for byte tokens that only form a character together.
        self.window = 2 * max(map(len, stop), default=1) + 4

    def hit(self, responses: list[list[int]]) -> torch.Tensor:
        """Per response (generated token ids only): whether its text now contains a stop string."""
        texts = self.tokenizer.batch_decode([r[-self.window:] for r in responses], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_) -> torch.Tensor:
        suffix = input_ids[:, self.prompt_len:]
        if self.done is None:
            self.done = torch.zeros(len(input_ids), dtype=torch.bool)
        skip = self.done.clone()
        if len(self.eos) and suffix.shape[1]:
            skip |= torch.isin(suffix.cpu(), self.eos).any(1)  # ended by an end token: generate has finished it
        rows = (~skip).nonzero().squeeze(-1).tolist()
        if rows:  # only each row's last `window` tokens are decoded: whole suffixes cost O(length) per step
            hit = self.hit(suffix[rows].tolist())
            self.done[torch.tensor(rows)[hit]] = True
        return self.done.to(input_ids.device)


# tokenizer -> every character a single token decodes to (None where the vocabulary cannot be decoded token by token)
_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_chars(tokenizer, vocab_size: int) -> frozenset[str] | None:
    key = (vocab_size, len(tokenizer))
    try:
        cached = _TOKEN_CHARS.get(tokenizer)
    except TypeError:  # not weak-referenceable or hashable
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        n = max(vocab_size, len(tokenizer))
        chars: frozenset[str] | None = frozenset("".join(
            tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True)))
    except Exception:  # a tokenizer that cannot decode some id alone: assume every stop string can appear
        chars = None
    try:
        _TOKEN_CHARS[tokenizer] = (key, chars)
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return chars


# Generation-config fields that make greedy decoding more than the argmax of the logits, with their neutral values.
_NEUTRAL = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
            "bad_words_ids": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
            "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
            "renormalize_logits": (None, False), "watermarking_config": (None,), "guidance_scale": (None, 1.0),
            "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0)}


# ... and the warpers sampling would apply besides the temperature, top-p and top-k the sampler passes itself.
_NEUTRAL_SAMPLING = {**_NEUTRAL, "min_p": (None, 0.0), "typical_p": (None, 1.0)}


def plain_argmax_greedy(model, sampling: bool = False) -> bool:
    """Whether greedy decoding of `model` is the argmax of its logits (no processor in its generation config);
    with `sampling`, whether sampling is plain temperature/top-p sampling (no other processor or warper)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    gc = getattr(model, "generation_config", None)
    fields = _NEUTRAL_SAMPLING if sampling else _NEUTRAL
    return gc is None or all(getattr(gc, k, None) in ok for k, ok in fields.items())


def argmax_pick(logits: torch.Tensor, live: torch.Tensor, step: int) -> torch.Tensor:
    """Greedy choice: the argmax of each live row's last logits."""
    return logits.argmax(-1)


def cache_argument(model: torch.nn.Module) -> str:
    """The name `model.forward` takes its KV cache by: transformers renamed `past_key_values` to `cache` (5.24 warns
    on the old name; 5.20, vLLM's pin, lacks the new)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def decode_dropping_finished(model, ids: torch.Tensor, attn: torch.Tensor, max_new_tokens: int, eos: list[int],
                             stop: _StopOnStrings | None = None,
                             pick: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = argmax_pick,
                             lockstep: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """New tokens per row of a left-padded batch, each ending at (and including) its end token or stop string.

    The same forward passes as `generate` would run, except that rows which ended are removed from the batch and
    its KV cache, so later steps cost only what is still being written. `pick(logits [b, V], live, step)` chooses
    the next token of the b rows still live (`live`: their indices in the original batch): greedy by default,
    harness.sampler's per-row draws when sampling. `lockstep(finished here) -> finished everywhere`: for a model
    sharded over ranks (FSDP), whose every forward pass gathers layers collectively, so each rank must run as
    many as the others: a rank whose rows have all ended keeps passing its last batch, outputs discarded.
    """
    cache = DynamicCache()
    key = cache_argument(model)
    pos = attn.long().cumsum(-1) - 1
    pos.masked_fill_(attn == 0, 1)  # as generate does; padded positions are masked anyway
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **{key: cache})
    live = torch.arange(len(ids))  # original row of each row still in the batch
    nxt = pick(out.logits[:, -1], live, 0)
    last = pos[:, -1]
    end = torch.tensor(eos, dtype=torch.long, device=ids.device)
    tokens: list[list[int]] = [[] for _ in range(len(ids))]
    idle = False  # lockstep: every row here has ended, the passes go on for the other ranks
    for step in range(max_new_tokens):
        if not idle:
            for row, t in zip(live.tolist(), nxt.tolist()):
                tokens[row].append(t)
            done = torch.isin(nxt, end) if len(eos) else torch.zeros_like(nxt, dtype=torch.bool)
            if stop is not None:
                done |= stop.hit([tokens[r] for r in live.tolist()]).to(done.device)
        if step == max_new_tokens - 1:
            break
        if lockstep is None and bool(done.all()):
            break
        if lockstep is not None:
            if lockstep(idle or bool(done.all())):
                break
            if not idle and bool(done.all()):
                idle, done = True, torch.zeros_like(done)  # keep the batch as it is: its passes are discarded
        if not idle and bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            attn, last, live, nxt = attn[keep], last[keep], live[keep.cpu()], nxt[keep]
        attn = torch.cat([attn, attn.new_ones(len(attn), 1)], dim=1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=last[:, None], use_cache=True,
                    **{key: cache})
        if not idle:
            nxt = pick(out.logits[:, -1], live, step + 1)
    return tokens


def producible_stops(tokenizer, stop: list[str], vocab_size: int = 0) -> list[str]:
    """The stop strings that generated text could contain; the others can never fire and need no check.

    A string is dropped only if it has an ASCII character other than a space that no single token decodes
    to (special tokens skipped). Decoding a sequence only concatenates the tokens' pieces, joins them with
    spaces, merges byte pieces into non-ASCII characters, or removes characters, so such a character never
    appears in any decoded text. On toy, the newline stop is dropped: the char vocabulary has no newline.
    """
    stops = [s for s in stop if s]
    chars = _token_chars(tokenizer, vocab_size) if stops else frozenset()
    if chars is None:
        return stops
    return [s for s in stops if all(c in chars or c == " " or not c.isascii() for c in s)]


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Text before the first occurrence of any stop string (lm-eval's postprocessing)."""
    for s in stop:
        if s:
            text = text.split(s)[0]
    return text


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                    stop: list[str] = STOP, add_special_tokens: bool = False,
                    drop_finished: bool | None = None) -> list[str]:
    """Greedy continuations of `prompts`, left-padded in batches sorted longest first, cut at `stop`.

    `drop_finished`: decode with `decode_dropping_finished` (True) or transformers' `generate` (False); None
    chooses the former wherever the model's generation config adds no logits processor.

    No BOS by default: the toy base is trained on raw prompt characters. The
    longest-first order (lm-eval's) means identical inputs give identical
    batches, hence bit-identical outputs, whichever path calls this.
    """
    if not prompts:
        return []
    enc = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(map(len, enc))
    if limit is not None and longest + max_new_tokens > limit:
        raise HarnessError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                           f"model's {limit} positions; lower the budget (world.max_new_tokens for rollouts, the task's "
                           f"max_gen_toks for evaluation) or use a longer-context model")
    order = sorted(range(len(prompts)), key=lambda i: (-len(enc[i]), prompts[i]))
    pad = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    stops = [s for s in stop if s]
    # Only stop strings the vocabulary can produce need a per-step check (the output is cut at all of them).
    checked = producible_stops(tokenizer, stops, int(getattr(model.config, "vocab_size", 0) or 0))
    out: list[str] = [""] * len(prompts)
    fast = plain_argmax_greedy(model) if drop_finished is None else drop_finished
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        T = len(enc[idx[0]])
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), T), dtype=torch.long)
        for row, i in enumerate(idx):
            L = len(enc[i])
            ids[row, T - L:] = torch.tensor(enc[i])
            attn[row, T - L:] = 1
        stopper = _StopOnStrings(tokenizer, checked, T, eos) if checked else None
        if fast:
            new = decode_dropping_finished(model, ids.to(model.device), attn.to(model.device), max_new_tokens, eos,
                                            stopper)
        else:
            kwargs: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList([stopper])} if stopper else {}
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=eos, **kwargs)
            new = gen[:, T:].tolist()
        for row, i in enumerate(idx):
            out[i] = cut_at_stop(tokenizer.decode(new[row], skip_special_tokens=True), stops)
    return out
