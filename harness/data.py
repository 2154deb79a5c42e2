"""Training examples, the data a method hands the engine, and collation into tensors.

All per-token tensors of a `Batch` live in *target coordinates*: position j is
the prediction of token j+1 from tokens <= j, so they have length T-1.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch


@dataclass
class Example:
    """One sequence to train on: a prompt, a response, and optional per-example/per-token fields.

    `fields` holds scalars such as an advantage or a weight; `token_fields` holds
    one float per *response* token (old log-probs, reference log-probs, an
    expert-prefix mask). `train_mask` selects which response tokens carry loss
    (all of them when None).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    task: str = ""
    source: str = ""
    fields: dict[str, float] = field(default_factory=dict)
    token_fields: dict[str, list[float]] = field(default_factory=dict)
    train_mask: list[float] | None = None


def fingerprint(examples: Iterable[Example]) -> str:
    """A digest of examples' tokens, masks and fields, equal across processes (python's str hash is not).

    Per-token fields (reference and π_old log-probs) are left out: each rank scores only its own share of a step
    (`Context.my_share`), so they legitimately differ across ranks.
    """
    rows = [(e.prompt_ids, e.response_ids, e.train_mask, sorted(e.fields.items())) for e in examples]
    return hashlib.blake2b(pickle.dumps(rows, protocol=4), digest_size=16).hexdigest()


@dataclass
class TrainData:
    """What `Method.data` returns: examples plus how the engine should step through them.

    batch_size: examples per optimizer step (None: the run's `train.batch_size`).
    passes: how many times to go through the examples (GRPO's num_iterations).
    max_steps: cap on optimizer steps taken from this data (None: until exhausted).
    """

    examples: list[Example]
    batch_size: int | None = None
    shuffle: bool = True
    passes: int = 1
    max_steps: int | None = None

    def steps(self, default_batch_size: int, rng: np.random.Generator) -> Iterator[list[Example]]:
        """Yield the examples of each optimizer step, in a seeded order."""
        size = self.batch_size or default_batch_size
        taken = 0
        for _ in range(self.passes):
            order = rng.permutation(len(self.examples)) if self.shuffle else np.arange(len(self.examples))
            for start in range(0, len(order), size):
                if self.max_steps is not None and taken >= self.max_steps:
                    return
                yield [self.examples[i] for i in order[start:start + size]]
                taken += 1


@dataclass
class Batch:
    """Collated examples on a device; the engine adds the policy's forward outputs.

    input_ids, attention_mask: [B, T]. targets, loss_mask: [B, T-1].
    fields[k]: [B]. token_fields[k]: [B, T-1] (zero outside the response).
    logp [B, T-1] and entropy [B, T-1] are set by the engine's forward pass on
    response positions (zero elsewhere); logp carries gradients, entropy only
    for a method with `needs_entropy_grad`. No [B, T-1, V] logits are kept:
    at a 150k vocabulary they cost 0.6 MB per token (harness.logprobs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    response_mask: torch.Tensor
    fields: dict[str, torch.Tensor]
    token_fields: dict[str, torch.Tensor]
    examples: list[Example]
    logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Number of sequences."""
        return self.input_ids.shape[0]


def collate(examples: list[Example], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Right-pad examples into a `Batch` whose masks cover only response tokens."""
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in examples]
    T = max(lengths)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    resp = torch.zeros((B, T - 1))
    train = torch.zeros((B, T - 1))
    token_keys = sorted({k for e in examples for k in e.token_fields})
    tok = {k: torch.zeros((B, T - 1)) for k in token_keys}
    for i, e in enumerate(examples):
        P, R = len(e.prompt_ids), len(e.response_ids)
        ids[i, : P + R] = torch.tensor(e.prompt_ids + e.response_ids)
        attn[i, : P + R] = 1
        # Response token k sits at input position P+k and is predicted at target position P+k-1.
        sl = slice(P - 1, P - 1 + R)
        resp[i, sl] = 1.0
        train[i, sl] = torch.tensor(e.train_mask, dtype=torch.float) if e.train_mask is not None else 1.0
        for k in token_keys:
            if k in e.token_fields:
                tok[k][i, sl] = torch.tensor(e.token_fields[k], dtype=torch.float)
    field_keys = sorted({k for e in examples for k in e.fields})
    fields = {k: torch.tensor([e.fields.get(k, 0.0) for e in examples], dtype=torch.float) for k in field_keys}
    return Batch(
        input_ids=ids.to(device), attention_mask=attn.to(device), targets=ids[:, 1:].to(device),
        loss_mask=train.to(device), response_mask=resp.to(device),
        fields={k: v.to(device) for k, v in fields.items()},
        token_fields={k: v.to(device) for k, v in tok.items()}, examples=examples,
    )
