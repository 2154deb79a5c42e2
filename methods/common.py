"""Pieces shared by methods, written once: masked reductions, KL estimators, advantages, sampling-and-verifying."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.data import Batch, Example
from harness.logprobs import token_logprobs
from harness.sampler import Completion


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all positions, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k2 KL estimate ½(log π_θ − log π_ref)² (RbD's penalty)."""
    return 0.5 * (logp - ref_logp) ** 2


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 KL estimate π_ref/π_θ − log(π_ref/π_θ) − 1 (DeepSeekMath; unbiased, ≥ 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages: r − mean(r), divided by (std(r) + eps) when `scale`.

    rewards: [P, G] (prompts x group). std is the sample std (Bessel's G − 1), as TRL's and RbD's `torch.std`.
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)            # [P, G]
    if not scale:
        return centred
    return centred / (rewards.std(dim=-1, unbiased=True, keepdim=True) + eps)


@torch.no_grad()
def reference_logp(model: torch.nn.Module, batch: Batch, precision: str = "fp32") -> torch.Tensor:
    """Per-token log-probs [B, T-1] of the batch's targets under another model (no gradient; 0 outside the response).

    `precision` is the run's (train.precision), so π_old and reference ratios compare like with like.
    """
    from harness.engine import precision_context
    # Chunked over positions and without entropies: the reference pass never holds a [B, T-1, V] tensor.
    with precision_context(batch.input_ids.device.type, precision):
        return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.targets, batch.response_mask)[0]


@torch.no_grad()
def example_logp(model: torch.nn.Module, examples: list[Example], pad_id: int, batch_size: int = 256,
                 precision: str = "fp32") -> list[list[float]]:
    """Per-response-token log-probs of each example under `model` (e.g. π_old for clipped ratios)."""
    from harness.data import collate
    out: list[list[float]] = []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        batch = collate(chunk, pad_id, next(model.parameters()).device)
        lp = reference_logp(model, batch, precision)
        for i, e in enumerate(chunk):
            P, R = len(e.prompt_ids), len(e.response_ids)
            out.append(lp[i, P - 1:P - 1 + R].tolist())
    return out


@dataclass
class Sampled:
    """A prompt's item and its sampled completions with verifier rewards."""

    item: object
    completions: list[Completion]
    rewards: list[float]


def sample_and_verify(ctx, items: list, n: int, temperature: float, top_p: float = 1.0,
                      prefix_ids: list[list[int]] | None = None, sampler=None) -> list[Sampled]:
    """Sample `n` completions per item from the policy (or `sampler`) and score each with the world's verifier.

    `prefix_ids` (optional, one per item) are response prefixes the model continues (TRAPO's expert prefixes),
    spliced after the prompt's ids as ids (never decoded and re-tokenized); the reward is computed on the prefix's
    text + the continuation. `sampler` is another model's sampler (`ctx.sampler_for`: a checkpoint, the base).
    """
    sampler = sampler or ctx.sampler
    prefix_ids = prefix_ids or [[] for _ in items]
    prompts = [ctx.encode(it.prompt) + list(px) for it, px in zip(items, prefix_ids)]
    outs = sampler.generate(prompts, n=n, temperature=temperature, top_p=top_p,
                            max_new_tokens=ctx.world.max_new_tokens)
    if sampler is not ctx.sampler:  # its tokens went to the run's counter; its seconds must join the run's too
        ctx.sampler.gen_seconds += sampler.gen_seconds
    texts = [ctx.tokenizer.decode(px, skip_special_tokens=True) if px else "" for px in prefix_ids]
    return [Sampled(it, comps, [ctx.world.verify(it, px + c.text) * float(c.finished) for c in comps])
            for it, px, comps in zip(items, texts, outs)]


def correct_examples(ctx, sampled: list[Sampled], per_prompt: int = 1, source: str = "self") -> list[Example]:
    """Training examples from verified-correct samples, at most `per_prompt` per prompt (first ones kept)."""
    out = []
    for s in sampled:
        kept = [c for c, r in zip(s.completions, s.rewards) if r > 0][:per_prompt]
        out += [Example(c.prompt_ids, c.response_ids, task=s.item.task, source=source) for c in kept]
    return out


def coverage(sampled: list[Sampled]) -> float:
    """Fraction of prompts with at least one verified-correct sample."""
    return sum(any(r > 0 for r in s.rewards) for s in sampled) / max(1, len(sampled))
