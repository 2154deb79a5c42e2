"""Exact metric definitions (DESIGN.md, "Metrics"): gain, drop, paired bootstrap CIs, PLD, KL to base.

FLOPs are counted in `harness.cost`.

Accuracies are in points (0..100). Per-example arrays are 0/1 floats in the
world's fixed eval order, so base and policy are paired example by example.
Model-based metrics use teacher forcing with right padding, no gradients, and
score response tokens only; pass the end token inside `responses_ids` if it
should be scored.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from harness.data import Example, collate
from harness.logprobs import token_kl, token_logprobs


def paired_diff(base: dict[str, np.ndarray], policy: dict[str, np.ndarray], task: str) -> np.ndarray:
    """Per-example (policy − base) correctness of one task in points; base and policy must be paired."""
    b, p = np.asarray(base[task], dtype=float), np.asarray(policy[task], dtype=float)
    if b.shape != p.shape:
        raise ValueError(f"task {task!r}: base has {b.shape} examples, policy {p.shape}; they must be paired")
    return 100.0 * (p - b)


def target_gain(base: np.ndarray, policy: np.ndarray) -> float:
    """Target gain in points: 100 * (mean policy correctness - mean base correctness)."""
    return float(np.mean(paired_diff({"t": base}, {"t": policy}, "t")))


def nontarget_drop(base: dict[str, np.ndarray], policy: dict[str, np.ndarray],
                   tasks: list[str]) -> tuple[float, dict[str, float]]:
    """Mean over tasks of (acc_base - acc_policy) in points (positive = forgetting), and the per-task drops."""
    drops = {t: -float(np.mean(paired_diff(base, policy, t))) for t in tasks}
    # No retention task means no retention question: NaN rather than a reassuring 0.
    return (float(np.mean(list(drops.values()))) if drops else float("nan")), drops


def _bootstrap_means(diff: np.ndarray, iters: int, rng: np.random.Generator) -> np.ndarray:
    """`iters` means of `diff` resampled with replacement (chunked so iters x n stays small)."""
    n = len(diff)
    if n == 0:
        raise ValueError("cannot bootstrap an empty eval set")
    chunk = max(1, 4_000_000 // n)
    out = np.empty(iters)
    for s in range(0, iters, chunk):
        k = min(chunk, iters - s)
        out[s:s + k] = diff[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def zero_flip_bound(sizes: list[int], alpha: float = 0.05) -> float:
    """Half-width in points of the exact interval of a mean paired difference when no example flipped.

    With no discordant pair among N examples, Clopper–Pearson bounds the flip rate by 1 − (α/2)^(1/N);
    a mean over tasks of unequal size is bounded through its smallest task's weight (conservative).
    """
    n_total, k = sum(sizes), len(sizes)
    return 100.0 * (1.0 - (alpha / 2) ** (1.0 / n_total)) * n_total / (k * min(sizes))


def bootstrap_cis(base: dict[str, np.ndarray], policy: dict[str, np.ndarray], target: str, nontarget: list[str],
                  iters: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Paired percentile-bootstrap CIs of target_gain and nontarget_drop (keys *_lo, *_hi), in points.

    Each task's examples are resampled independently; within a task, base and
    policy share the resampled indices (so only the paired difference matters).
    Where no example flipped, the bootstrap has nothing to resample (a zero-width
    interval): the interval is then the exact `zero_flip_bound` around 0 instead.
    """
    rng = np.random.default_rng(seed)
    q = [alpha / 2, 1 - alpha / 2]

    def interval(tasks: list[str], sign: float) -> tuple[float, float]:
        diffs = [paired_diff(base, policy, t) for t in tasks]
        if not any(d.any() for d in diffs):
            u = zero_flip_bound([len(d) for d in diffs], alpha)
            return -u, u
        lo, hi = np.quantile(sign * np.mean([_bootstrap_means(d, iters, rng) for d in diffs], axis=0), q)
        return float(lo), float(hi)

    gain_lo, gain_hi = interval([target], 1.0)
    drop_lo, drop_hi = interval(nontarget, -1.0) if nontarget else (float("nan"), float("nan"))
    return {"target_gain_lo": gain_lo, "target_gain_hi": gain_hi,
            "nontarget_drop_lo": drop_lo, "nontarget_drop_hi": drop_hi}


def pld_rise(history: list[float]) -> float:
    """TMS's rise of PLD from its running minimum: pld_t − min_{s≤t} pld_s (history ends at t, starts at θ₀)."""
    return float(history[-1] - min(history))


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


def _device(model: torch.nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters(), torch.empty(0)).device


def _response_batches(prompts_ids: list[list[int]], responses_ids: list[list[int]], batch_size: int,
                      pad_id: int, device: torch.device) -> Iterator:
    """Right-padded batches (harness.data.collate: the training loop's own target coordinates)."""
    if len(prompts_ids) != len(responses_ids):
        raise ValueError(f"{len(prompts_ids)} prompts but {len(responses_ids)} responses")
    for i, p in enumerate(prompts_ids):
        if not p:
            raise ValueError(f"example {i}: the prompt is empty; the first response token is predicted "
                             f"from the last prompt token")
    for s in range(0, len(prompts_ids), batch_size):
        yield collate([Example(list(p), list(r)) for p, r in zip(prompts_ids[s:s + batch_size],
                                                                 responses_ids[s:s + batch_size])], pad_id, device)


def _logprobs(model: torch.nn.Module, batch) -> torch.Tensor:
    """[B, T-1] float32 log-probabilities of the batch's targets on response positions (0 elsewhere).

    Chunked over positions (harness.logprobs): no [B, T-1, V] tensor, which at a 150k vocabulary is 0.6 MB a token.
    """
    return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.targets, batch.response_mask)[0]


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, prompts_ids: list[list[int]], responses_ids: list[list[int]],
                 batch_size: int, pad_id: int, per_token: bool = True) -> np.ndarray:
    """Per-example NLL (nats) of the response given the prompt: mean per token, or summed if not per_token.

    An empty response sums to 0 and has a NaN per-token mean.
    """
    out = []
    with eval_mode(model):
        for b in _response_batches(prompts_ids, responses_ids, batch_size, pad_id, _device(model)):
            logp = _logprobs(model, b)  # [B, T-1]
            nll = -(logp * b.response_mask).sum(-1)  # [B]
            if per_token:
                nll = nll / b.response_mask.sum(-1)
            out.append(nll.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pld(model: torch.nn.Module, prompts_ids: list[list[int]], responses_ids: list[list[int]],
        batch_size: int, pad_id: int) -> float:
    """Policy-Label Divergence (TMS): mean over (prompt, expert label) pairs of the per-token NLL of the label."""
    return float(np.mean(sequence_nll(model, prompts_ids, responses_ids, batch_size, pad_id, per_token=True)))


@torch.no_grad()
def kl_to_base(policy: torch.nn.Module, base: torch.nn.Module, prompts_ids: list[list[int]],
               responses_ids: list[list[int]], batch_size: int, pad_id: int) -> float:
    """Mean over samples of sum_t KL(pi_0(.|x,y<t) || pi_theta(.|x,y<t)); exact over the vocabulary, response only."""
    totals = []
    with eval_mode(policy), eval_mode(base):
        for b in _response_batches(prompts_ids, responses_ids, batch_size, pad_id, _device(policy)):
            # Exact over the vocabulary, chunked over response positions (harness.logprobs.token_kl).
            kl = token_kl(base, policy, b.input_ids, b.attention_mask, b.response_mask)  # [B, T-1]
            totals.append((kl * b.response_mask).sum(-1).double().cpu().numpy())  # [B]
    return float(np.mean(np.concatenate(totals))) if totals else float("nan")

