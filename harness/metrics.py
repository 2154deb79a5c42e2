"""Exact metric definitions (DESIGN.md, "Metrics"): gain, drop, paired bootstrap CIs, PLD, KL to base.

FLOPs are counted in `harness.cost`.

Accuracies are in points (0..100). Per-example arrays are 0/1 floats in the
world's fixed eval order, so base and policy are paired example by example.
Model-based metrics use teacher forcing with right padding, no gradients, and
score response tokens only; pass the end token inside `responses_ids` if it
should be scored.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import numpy as np
import torch

from harness.data import Example, collate
from harness import logprobs
from harness import metric_names as N
from harness.logprobs import eval_mode, token_greedy, token_kl, token_logprobs  # noqa: F401 (eval_mode is re-exported)


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
    return {N.TARGET_GAIN_LO: gain_lo, N.TARGET_GAIN_HI: gain_hi,
            N.NONTARGET_DROP_LO: drop_lo, N.NONTARGET_DROP_HI: drop_hi}


def pld_rise(history: list[float]) -> float:
    """TMS's rise of PLD from its running minimum: pld_t − min_{s≤t} pld_s (history ends at t, starts at θ₀)."""
    return float(history[-1] - min(history))


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


@torch.no_grad()
def continuation_loglikelihood(model: torch.nn.Module, prompts_ids: list[list[int]], continuations_ids: list[list[int]],
                               batch_size: int, pad_id: int) -> list[tuple[float, bool]]:
    """(summed log-prob of the continuation, whether greedy decoding would produce it) per pair: lm-eval's loglikelihood."""
    out: list[tuple[float, bool]] = []
    with eval_mode(model):
        for b in _response_batches(prompts_ids, continuations_ids, batch_size, pad_id, _device(model)):
            logp, hit = token_greedy(model, b.input_ids, b.attention_mask, b.targets, b.response_mask)  # [B, T-1]
            total = (logp * b.response_mask).sum(-1)                                                # [B]
            greedy = (hit * b.response_mask).sum(-1) == b.response_mask.sum(-1)                      # [B]
            out += [(float(x), bool(g)) for x, g in zip(total.double().cpu(), greedy.cpu())]
    return out


def pld(model: torch.nn.Module, prompts_ids: list[list[int]], responses_ids: list[list[int]],
        batch_size: int, pad_id: int) -> float:
    """Policy-Label Divergence (TMS): mean over (prompt, expert label) pairs of the per-token NLL of the label."""
    return float(np.mean(sequence_nll(model, prompts_ids, responses_ids, batch_size, pad_id, per_token=True)))


# The most float32 elements (B x (T-1) x V over the whole KL set) `kl_to_base(cache_base=True)` keeps of the base's
# log-probs: 64 MB. The toy KL set (200 samples x ~40 positions x 44 tokens) is ~1.4 MB; a 150k vocabulary never fits.
KL_CACHE_ELEMENTS = 1 << 24

# base model -> (key of the KL set and of the base's weights, per-batch [B, T-1, V] log-probs); a run's frozen base
# dies with its run, and its entry with it.
_BASE_LOGP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_version(model: torch.nn.Module) -> tuple[int, ...] | None:
    """In-place writes to any parameter or buffer bump its version: a changed base invalidates its cache.

    None where a tensor keeps no version counter (one made under inference mode): then nothing is cached."""
    try:
        return tuple(t._version for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:
        return None


def _vocab(model: torch.nn.Module, b) -> int | None:
    """The vocabulary size `token_kl` sees for `model` (its output head's width); None for a model it cannot split."""
    parts = logprobs._split(model, b.input_ids, b.attention_mask)  # checked once per model, then cached
    return None if parts is None else parts[2]


def _one_chunk_logp(model: torch.nn.Module, b) -> torch.Tensor:
    """`token_kl`'s log-softmax of `model` on a batch that takes its one-chunk path: [B, T-1, V] float32."""
    states, head, _ = logprobs._states(model, b.input_ids, b.attention_mask)
    return torch.log_softmax(head(states)[:, :-1].float(), -1)


def _base_logp(base: torch.nn.Module, batches: list, key: tuple) -> list[torch.Tensor] | None:
    """The base's log-probs of every batch from the cache, computed and stored on a miss; None if they do not fit."""
    hit = _BASE_LOGP.get(base)
    if hit is not None and hit[0] == key:
        return hit[1]
    out: list[torch.Tensor] | None = []
    total = 0
    for b in batches:
        vocab = _vocab(base, b)
        n = b.response_mask.numel() * vocab if vocab is not None else None
        if n is None or n > logprobs.CHUNK_ELEMENTS or total + n > KL_CACHE_ELEMENTS:
            out = None  # chunked by token_kl or too large: the base is scored afresh at every call
            break
        total += n
        out.append(_one_chunk_logp(base, b))
    _BASE_LOGP[base] = (key, out)
    return out


@torch.no_grad()
def kl_to_base(policy: torch.nn.Module, base: torch.nn.Module, prompts_ids: list[list[int]],
               responses_ids: list[list[int]], batch_size: int, pad_id: int, cache_base: bool = False) -> float:
    """Mean over samples of sum_t KL(pi_0(.|x,y<t) || pi_theta(.|x,y<t)); exact over the vocabulary, response only.

    `cache_base`: keep the base's log-probs on this KL set (when they fit in KL_CACHE_ELEMENTS and every batch
    takes `token_kl`'s one-chunk path) and reuse them while `base`, its weights and the set are unchanged: a
    run's frozen base is scored once instead of at every evaluation. The cached tensors are the very ones
    `token_kl` computes, fed to the same `_kl`, so the result is identical bit for bit.
    """
    totals = []
    with eval_mode(policy), eval_mode(base):
        batches = list(_response_batches(prompts_ids, responses_ids, batch_size, pad_id, _device(policy)))
        cached = None
        version = weights_version(base) if cache_base and batches else None
        if version is not None:
            key = (batch_size, pad_id, str(_device(policy)), logprobs.CHUNK_ELEMENTS, KL_CACHE_ELEMENTS, version,
                   tuple(map(tuple, prompts_ids)), tuple(map(tuple, responses_ids)))
            cached = _base_logp(base, batches, key)
        for i, b in enumerate(batches):
            vocab = _vocab(policy, b) if cached is not None else None
            if vocab is not None and b.response_mask.numel() * vocab <= logprobs.CHUNK_ELEMENTS:
                # token_kl's one-chunk path with the base's half precomputed (`_kl` leaves its first argument intact).
                kl = logprobs._kl(cached[i], _one_chunk_logp(policy, b))
                kl = torch.where(b.response_mask > 0, kl, kl.new_zeros(()))
            else:
                # Exact over the vocabulary, chunked over response positions (harness.logprobs.token_kl).
                kl = token_kl(base, policy, b.input_ids, b.attention_mask, b.response_mask)  # [B, T-1]
            totals.append((kl * b.response_mask).sum(-1).double().cpu().numpy())  # [B]
    return float(np.mean(np.concatenate(totals))) if totals else float("nan")
