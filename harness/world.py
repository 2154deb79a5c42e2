"""The World contract: what the engine asks of a world, and nothing more.

A world is a base model and its tokenizer, one target task and the retention
tasks, each with fixed validation and eval items, the target's training items
(with expert labels) and held-out items (the PLD labels and KL prompts), the
verifier that scores a response (training rewards and evaluation use the same
function), how lm-eval evaluates each task, and the tags a run logs.

`benchmarks/world.py` (the embedded toy world) and `benchmarks/real.py` (a
Hugging Face model on real lm-eval tasks, from a YAML preset) implement it; the
engine reaches them only through `build_world`, keyed by the config's `kind`.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

SPLITS = ("val", "eval")  # every selection reads "val"; every reported number reads "eval"


@dataclass(frozen=True)
class Item:
    """One problem: its prompt (text the model continues), gold answer, expert label and verifier key.

    `prompt` is the exact text that is tokenized (with the chat template already applied where the world uses
    one), so training, sampling and scoring see the same ids; `key` is whatever the world's verifier needs.
    """

    task: str
    prompt: str
    answer: str
    label: str
    key: str


@dataclass
class EvalTask:
    """How lm-eval evaluates one task of a world on both splits.

    `lm_tasks` maps lm-eval task names to what `lm_eval.tasks.TaskManager.load` takes (an inline dict config)
    or to built lm-eval Tasks; a group (mmlu) is one world task over many of them. `docs[split]` lists, in item
    order, the (lm-eval task, doc id) that each item of the split is. With `restrict`, lm-eval scores only those
    doc ids (`samples=`; real worlds draw both splits from one task's docs); without, each lm-eval task is
    scored whole (the toy world builds one task per split).
    """

    task: str
    lm_tasks: dict[str, Any]
    metric: str  # per-example metric key in lm-eval's logged samples
    docs: dict[str, list[tuple[str, int]]]
    filter: str | None = None  # filter ensemble whose samples are read (None: the only one)
    restrict: bool = True


class World(ABC):
    """A resolved world; subclasses fill the abstract members (see the module docstring)."""

    cfg: Any  # the world's validated config (a pydantic model with `kind` and `name`)
    target: str
    nontarget: list[str]

    @property
    def name(self) -> str:
        """The world's preset name."""
        return self.cfg.name

    @property
    def tasks(self) -> list[str]:
        """Every task: the target first, then the retention tasks."""
        return [self.target, *self.nontarget]

    def check_method(self, method: str) -> None:
        """Raise a one-line HarnessError if this world cannot train `method` (every method fits a toy world)."""

    @property
    @abstractmethod
    def max_new_tokens(self) -> int:
        """Cap on generated tokens for training samples, rollouts, and the base's KL samples."""

    @property
    @abstractmethod
    def train_items(self) -> list[Item]:
        """Target-task training problems with their expert labels."""

    @property
    @abstractmethod
    def heldout_items(self) -> list[Item]:
        """Held-out target problems with expert labels: the PLD set and the KL-to-base prompts."""

    @abstractmethod
    def split_items(self, split: str) -> dict[str, list[Item]]:
        """Items of an evaluation split ("val" or "eval"), per task, in a fixed order."""

    @cached_property
    def val_items(self) -> dict[str, list[Item]]:
        """Fixed validation sets, one per task: every selection is made here."""
        return self.split_items("val")

    @cached_property
    def eval_items(self) -> dict[str, list[Item]]:
        """Fixed eval sets, one per task, disjoint from validation: every reported number is read here."""
        return self.split_items("eval")

    def eval_splits(self) -> dict[str, dict[str, list[Item]]]:
        """Both evaluation splits: {"val": ..., "eval": ...}."""
        return {"val": self.val_items, "eval": self.eval_items}

    @abstractmethod
    def verify(self, item: Item, response: str) -> float:
        """Reward of a response to an item: the same function that scores the item in evaluation."""

    @abstractmethod
    def eval_tasks(self) -> list[EvalTask]:
        """How lm-eval evaluates each task on the validation and eval splits."""

    def eval_options(self) -> dict[str, Any]:
        """Keyword arguments of `lm_eval.evaluator.evaluate` this world needs (chat template, system prompt)."""
        return {}

    @abstractmethod
    def data_key(self) -> str:
        """Hash of everything that determines the base's scores (base, data, evaluation settings)."""

    @abstractmethod
    def base_path(self, progress: bool = True) -> str:
        """Local folder of the base model (built, or resolved from the hub cache, on first use)."""

    def load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of `harness.modeling.load_model` for this world's models."""
        return {}

    def tags(self) -> dict[str, str]:
        """MLflow tags every run of this world carries (world, target, and what else tells worlds apart)."""
        return {"world": self.name, "target": self.target}

    @property
    def cache_dir(self) -> Path:
        """Folder holding this world's cached base model and base scores."""
        return cache_root() / "worlds" / f"{self.name}-{self.data_key()}"


def cache_root() -> Path:
    """The harness's cache folder ($HARNESS_CACHE, default ~/.cache/forgetting-harness)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "forgetting-harness"))


def build_world(cfg) -> World:
    """The World a config describes, by its `kind` (the only place the engine reaches a world module)."""
    if cfg.kind == "real":
        from benchmarks.real import RealWorld
        return RealWorld(cfg)
    from benchmarks.world import ToyWorld
    return ToyWorld(cfg)
