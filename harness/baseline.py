"""The base model's scores: computed once per world and base checkpoint, cached on disk, reused by every run."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness import metrics
from harness.evaluation import Evaluator
from harness.sampler import HFSampler

KL_SAMPLE_SEED = 1234
# Bumped whenever what is computed changes (v2: the KL samples are HFSampler's per-row draws), so no stale file is read.
SCORES_VERSION = 2


@dataclass
class BaseScores:
    """Base accuracies per example, PLD, cached base samples for KL, and how off-policy the labels are."""

    checkpoint: str
    acc: dict[str, dict[str, float]]  # split ("val"/"eval") -> task -> accuracy in points
    correct: dict[str, dict[str, list[float]]]  # split -> task -> per-example 0/1
    responses: dict[str, dict[str, list[str]]]  # split -> task -> greedy responses
    pld: float
    kl_prompts: list[list[int]]
    kl_responses: list[list[int]]
    label_nll_token: float
    label_nll_seq: float
    own_nll_token: float
    own_nll_seq: float
    eval_seconds: float

    def correct_arrays(self, split: str = "eval") -> dict[str, np.ndarray]:
        """Per-task 0/1 arrays of one split, in item order."""
        return {t: np.asarray(v, dtype=float) for t, v in self.correct[split].items()}


def checkpoint_hash(path: str) -> str:
    """Short content hash of a model folder's weights (or the id itself for a hub name)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).exists() else []
    if not files:
        return hashlib.sha256(path.encode()).hexdigest()[:12]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def label_set(world, tok) -> tuple[list[list[int]], list[list[int]]]:
    """Held-out (prompt, expert label + end token) ids: the PLD set."""
    prompts = [tok.encode(it.prompt, add_special_tokens=False) for it in world.heldout_items]
    labels = [tok.encode(it.label, add_special_tokens=False) + [tok.eos_token_id] for it in world.heldout_items]
    return prompts, labels


def compute_base_scores(world, model, tok, evaluator: Evaluator, base_path: str, batch_size: int,
                        score_batch_size: int | None = None) -> BaseScores:
    """Evaluate the base: accuracies, PLD, NLL of teacher labels vs of its own greedy answers, KL samples.

    `batch_size` is the generation batch (it fixes which KL samples are drawn); `score_batch_size` (default:
    the same) is the batch of the teacher-forced NLL passes.
    """
    res = evaluator.evaluate(model)
    prompts, labels = label_set(world, tok)
    pad = tok.pad_token_id
    score = score_batch_size or batch_size
    label_tok = metrics.sequence_nll(model, prompts, labels, score, pad)  # metrics.pld's per-example terms
    label_seq = metrics.sequence_nll(model, prompts, labels, score, pad, per_token=False)
    sampler = HFSampler(model, tok, batch_size)
    greedy = sampler.generate(prompts, n=1, temperature=0, max_new_tokens=world.max_new_tokens)
    own = [g[0].response_ids for g in greedy]
    own_tok = metrics.sequence_nll(model, prompts, own, score, pad)
    own_seq = metrics.sequence_nll(model, prompts, own, score, pad, per_token=False)
    samples = HFSampler(model, tok, batch_size, seed=KL_SAMPLE_SEED).generate(
        prompts, n=1, temperature=1.0, max_new_tokens=world.max_new_tokens)
    return BaseScores(
        checkpoint=checkpoint_hash(base_path), acc={sp: r.acc for sp, r in res.splits.items()},
        correct={sp: {t: v.tolist() for t, v in r.correct.items()} for sp, r in res.splits.items()},
        responses={sp: r.responses for sp, r in res.splits.items()},
        pld=float(np.mean(label_tok)), kl_prompts=prompts, kl_responses=[s[0].response_ids for s in samples],
        label_nll_token=float(np.mean(label_tok)), label_nll_seq=float(np.mean(label_seq)),
        own_nll_token=float(np.mean(own_tok)), own_nll_seq=float(np.mean(own_seq)), eval_seconds=res.seconds)


def load_or_compute(world, model, tok, evaluator: Evaluator, base_path: str, batch_size: int,
                    score_batch_size: int | None = None) -> tuple[BaseScores, bool]:
    """Base scores from the world's cache, computing and saving them on first use; (scores, was_cached)."""
    path = world.cache_dir / f"base-scores-v{SCORES_VERSION}-{world.data_key()}-{checkpoint_hash(base_path)}.json"
    if path.exists():
        return BaseScores(**json.loads(path.read_text())), True
    scores = compute_base_scores(world, model, tok, evaluator, base_path, batch_size, score_batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(scores)))
    tmp.replace(path)
    return scores, False
