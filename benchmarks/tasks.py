"""Synthetic, verifiable task families of the `toy` world.

Each family is a string transformation with a seeded generator, one verifier
(response -> 0/1) shared by training rewards and evaluation, a *distractor*
(the family's plausible wrong mode, used only when the family is the world's
target, to make the base bimodal) and *worked steps* (the teacher's
intermediate tokens in the strongly off-policy label style).

Prompts look like ``sort:83512=``; the base's own answer format is the bare
answer (``12358``). The teacher styles, from the on-policy end of the off-policy
dial to the far end (README, "The off-policy dial", has the base's NLL of each):
``own`` (``12358``); ``sparse`` (``|12358`` on a quarter of the prompts, chosen
by a hash of the payload, ``12358`` on the rest); ``mild`` (``|12358``);
``partial`` (the first worked step, ``1|12358``); ``worked`` (``1,2,3,5,8|12358``).
Pretraining text never contains ``|`` or ``,``, and a response that is not
exactly the bare answer must end in ``|answer`` to pass the verifier, so no
single-format style can sit between ``own`` and ``mild``: ``sparse`` fills that
gap by how often the delimiter appears, ``partial`` the gap between ``mild``
and ``worked`` by how many unseen steps precede it. The verifier reads the text
after the last ``|``, so every teacher style is a valid, verifier-accepted solution.
"""
from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from harness.world import Item

if TYPE_CHECKING:
    from benchmarks.world import WorldConfig

DIGITS = string.digits
LETTERS = string.ascii_lowercase
ANSWER_DELIMITER = "|"
STEP_SEPARATOR = ","
# Ordered from the far (off-policy) end to the on-policy end; `benchmarks.world.TeacherStyle` lists the same names.
TEACHER_STYLES = ("worked", "partial", "mild", "sparse", "own")
# `sparse` writes the delimiter on 1 prompt in SPARSE_EVERY (declared before any run, to sit near the geometric
# middle of `own`'s and `mild`'s label NLL on toy's earlier table: (3 × 1.2 + 49.1) / 4 ≈ 13 nats against
# sqrt(1.2 × 49.1) ≈ 7.7).
SPARSE_EVERY = 4
SPLITS = ("train", "val", "eval", "heldout")


@dataclass(frozen=True)
class TaskFamily:
    """One verifiable problem family: how to draw a payload, solve it, and get it wrong."""

    name: str
    description: str
    draw: Callable[[random.Random], str]
    solve: Callable[[str], str]
    distractor: Callable[[str], str]
    steps: Callable[[str], list[str]]

    def prompt(self, payload: str) -> str:
        """The prompt text the model sees for a payload."""
        return f"{self.name}:{payload}="

    def answer(self, payload: str) -> str:
        """The gold answer (bare, in the base's own format)."""
        return self.solve(payload)

    def label(self, payload: str, style: str) -> str:
        """An expert label in a teacher style; every style passes `verify`."""
        answer = self.solve(payload)
        if style == "own":
            return answer
        if style == "mild" or (style == "sparse" and _sparse_pick(payload)):
            return ANSWER_DELIMITER + answer
        if style == "sparse":
            return answer
        if style == "partial":
            return self.steps(payload)[0] + ANSWER_DELIMITER + answer
        if style == "worked":
            return STEP_SEPARATOR.join(self.steps(payload)) + ANSWER_DELIMITER + answer
        raise ValueError(f"unknown teacher style {style!r}; valid: {', '.join(TEACHER_STYLES)}")

    def verify(self, payload: str, response: str) -> float:
        """1.0 when the response's final answer (after the last '|') is correct, else 0.0."""
        final = response.strip().rsplit(ANSWER_DELIMITER, 1)[-1].strip()
        return float(final == self.solve(payload))


def _sparse_pick(payload: str) -> bool:
    """Whether `sparse` writes the delimiter on this payload (1 in SPARSE_EVERY; a hash independent of the split's)."""
    return int(hashlib.md5(f"sparse:{payload}".encode()).hexdigest(), 16) % SPARSE_EVERY == 0


def _digits(n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice(DIGITS) for _ in range(n))


def _letters(n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice(LETTERS) for _ in range(n))


def _draw_count(rng: random.Random) -> str:
    # The queried letter appears with probability 0.3 per slot, so counts spread over 0..5
    # instead of collapsing to 0 as uniform letters would.
    letter = rng.choice(LETTERS)
    others = LETTERS.replace(letter, "")
    word = "".join(letter if rng.random() < 0.3 else rng.choice(others) for _ in range(8))
    return f"{letter}{word}"


def _count(payload: str) -> int:
    return payload[1:].count(payload[0])


def _shift(payload: str, k: int, alphabet: str) -> str:
    return "".join(alphabet[(alphabet.index(c) + k) % len(alphabet)] for c in payload)


def _running_max(payload: str) -> list[str]:
    return [max(payload[: i + 1]) for i in range(len(payload))]


FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in [
        TaskFamily("sort", "sort 5 digits ascending (wrong mode: descending)", _digits(5),
                   lambda p: "".join(sorted(p)), lambda p: "".join(sorted(p, reverse=True)),
                   lambda p: sorted(p)),
        TaskFamily("rev", "reverse 5 letters (wrong mode: copy)", _letters(5),
                   lambda p: p[::-1], lambda p: p, lambda p: list(p[::-1])),
        TaskFamily("count", "count a letter among 8 (wrong mode: count the others)", _draw_count,
                   lambda p: str(_count(p)), lambda p: str(8 - _count(p)),
                   lambda p: [str(i + 1) for i, c in enumerate(p[1:]) if c == p[0]] or ["0"]),
        TaskFamily("add", "add 3 mod 10 to each of 5 digits (wrong mode: subtract 3)", _digits(5),
                   lambda p: _shift(p, 3, DIGITS), lambda p: _shift(p, -3, DIGITS),
                   lambda p: list(_shift(p, 3, DIGITS))),
        TaskFamily("max", "maximum of 5 digits (wrong mode: minimum)", _digits(5),
                   lambda p: max(p), lambda p: min(p), _running_max),
        TaskFamily("shift", "shift 5 letters one forward (wrong mode: one back)", _letters(5),
                   lambda p: _shift(p, 1, LETTERS), lambda p: _shift(p, -1, LETTERS),
                   lambda p: list(_shift(p, 1, LETTERS))),
    ]
}


def split_of(family: str, payload: str) -> str:
    """Deterministic split of a payload (70% train, 10% val, 10% eval, 10% heldout), disjoint by construction.

    The train bucket is what pretraining draws from, so it must not move (the base's cache key does not
    hash the split rule); validation was carved out of what used to be a 20% eval bucket.
    """
    bucket = int(hashlib.md5(f"{family}:{payload}".encode()).hexdigest(), 16) % 10
    return "train" if bucket < 7 else {7: "val", 8: "eval", 9: "heldout"}[bucket]


def favours_correct_mode(payload: str) -> bool:
    """Whether the bimodal base prefers the correct mode on this prompt (~30% of prompts).

    Depends only on the payload's first character, so the preference is a
    learnable feature of the prompt, as in a multi-modal real base.
    """
    return ord(payload[0]) % 10 < 3


def draw_payloads(family: str, split: str, n: int, seed: int) -> list[str]:
    """`n` distinct payloads of one split, deterministic in (family, split, seed)."""
    task = FAMILIES[family]
    rng = random.Random(f"{seed}:{family}:{split}")
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"task {family!r} cannot supply {n} distinct {split} prompts; lower the split size")
        p = task.draw(rng)
        if split_of(family, p) == split:
            seen.setdefault(p, None)
    return list(seen)


class Task:
    """A task of a world: split items and the verifier shared by rewards and evaluation."""

    def __init__(self, family: TaskFamily, cfg: WorldConfig):
        self.family, self.cfg, self.name = family, cfg, family.name

    def items(self, split: str, n: int) -> list[Item]:
        """The first `n` items of a split (deterministic)."""
        return [self._item(p) for p in draw_payloads(self.name, split, n, self.cfg.seed)]

    def _item(self, payload: str) -> Item:
        f = self.family
        return Item(self.name, f.prompt(payload), f.answer(payload), f.label(payload, self.cfg.teacher_style), payload)

    def verify(self, item: Item, response: str) -> float:
        """1.0 if the response solves the item, else 0.0."""
        return self.family.verify(item.key, response)
