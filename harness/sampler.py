"""Generation backends behind one interface: transformers `generate` now, vLLM at real scale.

A sampler takes token-id prompts and returns, per prompt, `n` completions
(response ids cut after the end token, decoded text, whether it finished). It
reports every prompt token of every sample (prefill) and every generated token
to its `cost` counter (the run's, once a Context holds it) and counts seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from harness.cost import Cost


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


class HFSampler:
    """Batched `model.generate` with KV cache; prompts of equal length are batched without padding."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 512, cost: Cost | None = None):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.cost = cost if cost is not None else Cost()
        self.gen_seconds = 0.0

    @property
    def gen_tokens(self) -> int:
        """Generated tokens counted so far by this sampler's cost counter."""
        return self.cost.tokens["gen"]

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32) -> list[list[Completion]]:
        """`n` completions per prompt, in prompt order."""
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        # Grouping by length avoids padding entirely when a task has fixed-length prompts.
        rows.sort(key=lambda r: len(r[1]))
        out: list[list[Completion]] = [[] for _ in prompts]
        device = next(self.model.parameters()).device
        greedy = temperature <= 0
        try:
            for s in range(0, len(rows), self.batch_size):
                chunk = rows[s:s + self.batch_size]
                T = max(len(p) for _, p in chunk)
                # Left padding, built as lists and converted once (a tensor per row cost ~1% of a toy call).
                ids = torch.tensor([[pad] * (T - len(p)) + list(p) for _, p in chunk], dtype=torch.long)
                attn = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for _, p in chunk], dtype=torch.long)
                gen = self.model.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
                    do_sample=not greedy, temperature=None if greedy else temperature,
                    top_p=None if greedy else top_p, top_k=None, pad_token_id=pad, eos_token_id=eos)
                # One tensor-to-list conversion and one batched decode per chunk, not one per row.
                resps = []
                for resp in gen[:, T:].tolist():
                    if eos in resp:
                        resps.append((resp[: resp.index(eos) + 1], True))
                    else:
                        resps.append(([t for t in resp if t != pad], False))
                texts = self.tok.batch_decode([r for r, _ in resps], skip_special_tokens=True)
                for (i, p), (resp, finished), text in zip(chunk, resps, texts):
                    out[i].append(Completion(list(p), resp, text, finished))
                self.cost.add("prefill", sum(len(p) for _, p in chunk))
                self.cost.add("gen", sum(len(r) for r, _ in resps))
        finally:
            self.model.train(was_training)
            self.gen_seconds += time.perf_counter() - start
        return out


def build_sampler(cfg, policy: torch.nn.Module, tokenizer) -> Sampler:
    """The run's sampler over the policy: `train.sampler` picks transformers (`hf`) or an in-process vLLM engine."""
    if cfg.train.sampler == "vllm":
        from harness import distributed
        from harness.vllm_sampler import VLLMSampler
        # Under several ranks each joins the launcher's process group with an engine of its own (TRL's colocate).
        extra = {"distributed_executor_backend": "external_launcher"} if distributed.world_size() > 1 else {}
        return VLLMSampler(policy, tokenizer, gpu_memory_utilization=cfg.train.vllm_gpu_memory_utilization,
                           enable_sleep_mode=cfg.train.vllm_sleep, seed=cfg.train.seed, dtype="bfloat16",
                           batch_size=cfg.rollout_batch_size, **extra)
    return HFSampler(policy, tokenizer, cfg.rollout_batch_size)
