"""Generation backends behind one interface: transformers (HFSampler) on any device, vLLM at real scale.

A sampler takes token-id prompts and returns, per prompt, `n` completions
(response ids cut after the end token, decoded text, whether it finished). It
reports every prompt token of every sample (prefill) and every generated token
to its `cost` counter (the run's, once a Context holds it) and counts seconds.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from harness.cost import Cost
from harness.greedy import argmax_pick, decode_dropping_finished, plain_argmax_greedy
from harness.parallel import Parallel


@dataclass
class Completion:
    """One sampled response to a prompt."""

    prompt_ids: list[int]
    response_ids: list[int]  # includes the end token when the model emitted it
    text: str
    finished: bool


class Sampler(Protocol):
    """What methods and the harness need from a generation backend."""

    cost: Cost
    gen_seconds: float

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32) -> list[list[Completion]]:
        """`n` completions per prompt; temperature 0 means greedy."""
        ...


def row_uniforms(keys: list[tuple], steps: int) -> torch.Tensor:
    """[len(keys), steps] uniforms in [0, 1); each row is a function of its key alone (not of the batch)."""
    out = torch.empty(len(keys), steps)
    g = torch.Generator()
    for r, key in enumerate(keys):
        g.manual_seed(int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little") >> 1)
        torch.rand(steps, generator=g, out=out[r])
    return out


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter as transformers' TopPLogitsWarper: drop the least likely tokens whose total is ≤ 1 - top_p
    (always keeping the most likely one); dropped scores become -inf."""
    sorted_s, order = scores.sort(-1)
    drop_sorted = sorted_s.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_sorted[:, -1] = False
    return scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


class RowDraws:
    """Temperature then top-p sampling, as `generate` does, by inverse CDF on uniforms drawn per row in advance.

    A row's tokens depend only on its model's logits and its own uniforms, so they do not change with the batch it
    is decoded in, the sampler's batch size, or which rows finished first (`decode_dropping_finished`).
    """

    def __init__(self, uniforms: torch.Tensor, temperature: float, top_p: float):
        self.u, self.temperature, self.top_p = uniforms, temperature, top_p

    def __call__(self, logits: torch.Tensor, live: torch.Tensor, step: int) -> torch.Tensor:
        scores = logits.float() / self.temperature
        if self.top_p < 1.0:
            scores = top_p_filter(scores, self.top_p)
        probs = scores.softmax(-1)
        cdf = probs.cumsum(-1)
        v = (self.u[live, step].to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        tok = torch.searchsorted(cdf, v, right=True).squeeze(-1)
        last = (probs > 0).cumsum(-1).argmax(-1)  # the last token with mass: v can round up to the total
        return torch.minimum(tok, last)


class HFSampler:
    """Batched decoding with KV cache through transformers; prompts of equal length are batched without padding.

    Rows are decoded by harness.greedy's loop, which drops finished rows from the batch, with per-row draws keyed
    by (seed, stream, call, prompt index, sample index): the same seed gives the same samples whatever the batch
    size. Where the model's generation config adds a logits processor, `generate` samples instead (global RNG).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 512, cost: Cost | None = None,
                 seed: int = 0, stream: str = "", own_loop: bool | None = None):
        """`own_loop`: decode with harness.greedy's loop (True) or `generate` (False); None: the loop wherever the
        model's generation config adds no processor."""
        self.model, self.tok, self.batch_size, self.own_loop = model, tokenizer, batch_size, own_loop
        self.cost = cost if cost is not None else Cost()
        self.gen_seconds = 0.0
        self.seed, self.stream, self.calls = seed, stream, 0
        self.lockstep: Callable[[bool], bool] | None = None  # set for a sharded model (RankShardedSampler)

    def can_lockstep(self) -> bool:
        """Whether this sampler can decode in step with other ranks: its own loop, which `generate` is not."""
        return self.own_loop is not False and plain_argmax_greedy(self.model) and \
            plain_argmax_greedy(self.model, sampling=True)

    @property
    def gen_tokens(self) -> int:
        """Generated tokens counted so far by this sampler's cost counter."""
        return self.cost.tokens["gen"]

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, indices: list[int] | None = None) -> list[list[Completion]]:
        """`n` completions per prompt, in prompt order; `indices`: each prompt's index in the whole call (the key
        of its draws; default 0, 1, ...), for a rank that samples a share of it (RankShardedSampler)."""
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        keys = list(range(len(prompts))) if indices is None else indices
        rows = [(i, j, p) for i, p in enumerate(prompts) for j in range(n)]
        # Grouping by length avoids padding entirely when a task has fixed-length prompts.
        rows.sort(key=lambda r: len(r[2]))
        out: list[list[Completion]] = [[] for _ in prompts]
        device = next(self.model.parameters()).device
        greedy = temperature <= 0
        own_loop = plain_argmax_greedy(self.model, sampling=not greedy) if self.own_loop is None else self.own_loop
        if self.lockstep is not None and not own_loop:
            raise RuntimeError("a lockstep sampler decodes with its own loop; `generate` cannot keep ranks in step")
        call, self.calls = self.calls, self.calls + 1
        try:
            for s in range(0, len(rows), self.batch_size):
                chunk = rows[s:s + self.batch_size]
                T = max(len(p) for _, _, p in chunk)
                # Left padding, built as lists and converted once (a tensor per row cost ~1% of a toy call).
                ids = torch.tensor([[pad] * (T - len(p)) + list(p) for _, _, p in chunk], dtype=torch.long).to(device)
                attn = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for _, _, p in chunk],
                                    dtype=torch.long).to(device)
                if own_loop:
                    pick = argmax_pick if greedy else RowDraws(row_uniforms(
                        [(self.seed, self.stream, call, keys[i], j) for i, j, _ in chunk], max_new_tokens), temperature, top_p)
                    resps = [(r, bool(r) and r[-1] == eos) for r in
                             decode_dropping_finished(self.model, ids, attn, max_new_tokens, [eos], pick=pick,
                                                      lockstep=self.lockstep)]
                else:
                    gen = self.model.generate(
                        input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                        do_sample=not greedy, temperature=None if greedy else temperature,
                        top_p=None if greedy else top_p, top_k=None, pad_token_id=pad, eos_token_id=eos)
                    resps = []  # one tensor-to-list conversion per chunk, not one per row
                    for resp in gen[:, T:].tolist():
                        if eos in resp:
                            resps.append((resp[: resp.index(eos) + 1], True))
                        else:
                            resps.append(([t for t in resp if t != pad], False))
                texts = self.tok.batch_decode([r for r, _ in resps], skip_special_tokens=True)
                for (i, _, p), (resp, finished), text in zip(chunk, resps, texts):
                    out[i].append(Completion(list(p), resp, text, finished))
                self.cost.add("prefill", sum(len(p) for _, _, p in chunk))
                self.cost.add("gen", sum(len(r) for r, _ in resps))
        finally:
            self.model.train(was_training)
            self.gen_seconds += time.perf_counter() - start
        return out


class RankShardedSampler:
    """Data-parallel rollouts: each of N ranks samples its share prompts[rank::N], and every rank gets all of them.

    HFSampler keys each row's draws (VLLMSampler each request's seed) by its index in the whole call, so the
    completions are the ones one process would sample (up to padding's rounding) and N ranks train on the same
    data as one, generating N times less each. The other ranks' prefill and generated tokens are added to this
    rank's counter: cost stays the call's. `lockstep` (a sharded model, FSDP: every forward pass gathers layers
    collectively): every share is padded to the same size with copies of a prompt whose samples are dropped
    uncounted, and the inner sampler decodes in step with the other ranks (HFSampler.lockstep).
    """

    def __init__(self, inner: Sampler, lockstep: bool = False, parallel: Parallel | None = None):
        self.inner, self.lockstep = inner, lockstep
        self.parallel = parallel if parallel is not None else Parallel.of()
        if lockstep:
            inner.lockstep = self.parallel.all_done

    def __getattr__(self, name: str):  # batch_size, model, ... are the inner sampler's
        return getattr(self.inner, name)

    @property
    def gen_seconds(self) -> float:
        """The inner sampler's seconds: `sampler.gen_seconds += t` (methods timing their own loops) must reach the
        counter cost/gen_s reads, not set a new attribute on the wrapper that hides it."""
        return self.inner.gen_seconds

    @gen_seconds.setter
    def gen_seconds(self, value: float) -> None:
        self.inner.gen_seconds = value

    @property
    def cost(self) -> Cost:
        """The run's counter (the inner sampler's)."""
        return self.inner.cost

    @cost.setter
    def cost(self, value: Cost) -> None:
        self.inner.cost = value

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, **kwargs) -> list[list[Completion]]:
        """`n` completions per prompt, in prompt order, on every rank (`kwargs`: the inner sampler's options)."""
        size, N = len(prompts), self.parallel.world
        mine = self.parallel.share(list(range(size)))
        filler = [mine[-1] if mine else 0] * (-(-size // N) - len(mine)) if self.lockstep and size else []
        before = dict(self.inner.cost.tokens)
        done = self.inner.generate([prompts[i] for i in mine + filler], n, temperature, top_p, max_new_tokens,
                                   indices=mine + filler, **kwargs)
        for completions in done[len(mine):]:  # the filler's passes only kept this rank in step: not the call's cost
            self.inner.cost.add("prefill", -sum(len(c.prompt_ids) for c in completions))
            self.inner.cost.add("gen", -sum(len(c.response_ids) for c in completions))
        spent = {k: v - before.get(k, 0) for k, v in self.inner.cost.tokens.items()}
        out: list[list[Completion]] = [[] for _ in prompts]
        for r, (idx, completions, used) in enumerate(self.parallel.gather((mine, done[:len(mine)], spent))):
            for i, c in zip(idx, completions):
                out[i] = c
            if r != self.parallel.rank:
                for kind, tokens in used.items():
                    self.inner.cost.add(kind, tokens)
        return out


def rank_sharded(sampler: Sampler, parallel: Parallel, lockstep: bool = False) -> Sampler:
    """`sampler`, sampling only its share on each rank when there are several (RankShardedSampler); `lockstep`
    for a sharded model (FSDP), where a sampler that cannot decode in step (`generate`) samples every prompt on
    every rank instead."""
    if not parallel.several or isinstance(sampler, RankShardedSampler):
        return sampler
    if lockstep and not (isinstance(sampler, HFSampler) and sampler.can_lockstep()):
        return sampler
    return RankShardedSampler(sampler, lockstep, parallel)


def build_sampler(cfg, policy: torch.nn.Module, tokenizer, parallel: Parallel | None = None) -> Sampler:
    """The run's sampler over the policy: `train.sampler` picks transformers (`hf`) or an in-process vLLM engine;
    under several ranks (`parallel`, default: this process's group) each samples its share of every call
    (RankShardedSampler; in lockstep under FSDP)."""
    parallel = parallel if parallel is not None else Parallel.of(cfg.train)
    if cfg.train.sampler == "vllm":
        from harness.vllm_sampler import VLLMSampler
        # Under several ranks each joins the launcher's process group with an engine of its own (TRL's colocate).
        extra = {"distributed_executor_backend": "external_launcher"} if parallel.several else {}
        sampler = VLLMSampler(policy, tokenizer, gpu_memory_utilization=cfg.train.vllm_gpu_memory_utilization,
                              enable_sleep_mode=cfg.train.vllm_sleep, seed=cfg.train.seed, dtype="bfloat16",
                              batch_size=cfg.rollout_batch_size, **extra)
    else:
        sampler = HFSampler(policy, tokenizer, cfg.rollout_batch_size, seed=cfg.train.seed)
    return rank_sharded(sampler, parallel, lockstep=parallel.lockstep(None))  # the engine shards the policy later
