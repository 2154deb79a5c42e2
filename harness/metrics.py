"""Exact metric definitions (DESIGN.md, "Metrics"): gain, drop, paired bootstrap CIs, PLD, KL to base, FLOPs.

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
import torch.nn.functional as F

from harness.data import Example, collate


def target_gain(base: np.ndarray, policy: np.ndarray) -> float:
    """Target gain in points: 100 * (mean policy correctness - mean base correctness)."""
    return 100.0 * (float(np.mean(policy)) - float(np.mean(base)))


def nontarget_drop(base: dict[str, np.ndarray], policy: dict[str, np.ndarray],
                   tasks: list[str]) -> tuple[float, dict[str, float]]:
    """Mean over tasks of (acc_base - acc_policy) in points (positive = forgetting), and the per-task drops."""
    drops = {t: 100.0 * (float(np.mean(base[t])) - float(np.mean(policy[t]))) for t in tasks}
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


def bootstrap_cis(base: dict[str, np.ndarray], policy: dict[str, np.ndarray], target: str, nontarget: list[str],
                  iters: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Paired percentile-bootstrap CIs of target_gain and nontarget_drop (keys *_lo, *_hi), in points.

    Each task's examples are resampled independently; within a task, base and
    policy share the resampled indices (so only the paired difference matters:
    a policy identical to the base example by example gives a zero-width CI).
    """
    rng = np.random.default_rng(seed)
    q = [alpha / 2, 1 - alpha / 2]

    def diff(t: str) -> np.ndarray:  # policy - base per example, in points
        b, p = np.asarray(base[t], dtype=float), np.asarray(policy[t], dtype=float)
        if b.shape != p.shape:
            raise ValueError(f"task {t!r}: base has {b.shape} examples, policy {p.shape}; they must be paired")
        return 100.0 * (p - b)

    gain = _bootstrap_means(diff(target), iters, rng)
    if nontarget:
        drop = -np.mean([_bootstrap_means(diff(t), iters, rng) for t in nontarget], axis=0)
        drop_lo, drop_hi = np.quantile(drop, q)
    else:
        drop_lo = drop_hi = float("nan")
    gain_lo, gain_hi = np.quantile(gain, q)
    return {"target_gain_lo": float(gain_lo), "target_gain_hi": float(gain_hi),
            "nontarget_drop_lo": float(drop_lo), "nontarget_drop_hi": float(drop_hi)}


def seed_bootstrap_ci(values: list[float], iters: int = 10000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean over seeds (a single seed gives a zero-width interval)."""
    v = np.asarray(values, dtype=float)
    lo, hi = np.quantile(_bootstrap_means(v, iters, np.random.default_rng(seed)), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
    """[B, T-1, V] float32 log-probabilities of the next token at every position."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, prompts_ids: list[list[int]], responses_ids: list[list[int]],
                 batch_size: int, pad_id: int, per_token: bool = True) -> np.ndarray:
    """Per-example NLL (nats) of the response given the prompt: mean per token, or summed if not per_token.

    An empty response sums to 0 and has a NaN per-token mean.
    """
    out = []
    with eval_mode(model):
        for b in _response_batches(prompts_ids, responses_ids, batch_size, pad_id, _device(model)):
            logp = _logprobs(model, b).gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
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
            logp0 = _logprobs(base, b)  # [B, T-1, V]
            logp = _logprobs(policy, b)  # [B, T-1, V]
            p0 = logp0.exp()
            # 0 * log 0 = 0: tokens the base rules out (p0 == 0, logp0 = -inf) contribute nothing.
            kl = torch.where(p0 > 0, p0 * (logp0 - logp), torch.zeros_like(p0)).sum(-1)  # [B, T-1]
            totals.append((kl * b.response_mask).sum(-1).double().cpu().numpy())  # [B]
    return float(np.mean(np.concatenate(totals))) if totals else float("nan")


def flops(n_params: int, train_tokens: int, gen_tokens: int) -> float:
    """Estimated FLOPs: 6N per trained token (forward + backward) plus 2N per generated token (forward)."""
    return 6.0 * n_params * train_tokens + 2.0 * n_params * gen_tokens
