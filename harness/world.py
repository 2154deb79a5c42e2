"""The World contract: what the engine asks of a world, and nothing more.

A world is a base model and its tokenizer, one target task and the retention
tasks, each with fixed validation and eval items, the target's training items
(with expert labels) and held-out items (the PLD labels and KL prompts), the
verifier that scores a response (training rewards and evaluation use the same
function), how lm-eval evaluates each task, and the tags a run logs.

`benchmarks/world.py` (the embedded toy world) and `benchmarks/real.py` (a
Hugging Face model on real lm-eval tasks) implement it. The engine reaches them
only through `WORLD_KINDS`, one table of `"kind": "module:Class"` strings
imported on first use (as lm-eval's registry names its classes): the run
config validates its world by the kind's `Config`, `build_world` builds it, and
`harness list` and the staging commands read the same table. Presets of every
kind are YAML files in one folder (`PRESETS`), looked up by name.
"""
from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import unknown

# Each kind's World class; its `Config` (a pydantic model whose `kind` field defaults to the key) is what a run
# config's `world` mapping is validated as. A new kind is one module and one line here.
WORLD_KINDS: dict[str, str] = {"toy": "benchmarks.world:ToyWorld", "real": "benchmarks.real:RealWorld"}
DEFAULT_KIND = "toy"  # the kind of a world mapping that names none
PRESETS = "benchmarks:PRESET_DIR"  # the folder of shipped world presets: <name>.yaml, run-config overrides each

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
class Requirement:
    """One thing a world reads from disk: what it is, where, and whether it is there (None: known on loading)."""

    what: str
    where: str
    present: bool | None
    problem: str = ""
    """When not present: the one-line problem and fix, if more is known than that the file is absent."""

    def line(self) -> str:
        """A printable row."""
        mark = {True: "ok     ", False: "MISSING", None: "on load"}[self.present]
        return f"  {mark}  {self.what}: {self.where}" + (f" -- {self.problem}" if self.problem else "")


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

    # The kind's validated config: a pydantic model with `kind`, `name`, `target_task`, `summary()`, `data_key()`.
    Config: ClassVar[type]
    cfg: Any
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

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise a one-line HarnessError for settings this kind cannot use, cheaply, before anything is computed
        (a world that loads its tasks and data to know, a real one, leaves it to `harness run --dry-run`)."""

    @classmethod
    def requirements(cls, cfg: Any) -> list[Requirement]:
        """What a world of this config reads from disk, checked offline without loading it (`--dry-run`)."""
        return []

    @classmethod
    def stage(cls, cfg: Any, progress: bool = True, rebuild_base: bool = False) -> None:
        """Fill the local caches with what a world of this config reads (`harness fetch`; may need the network);
        `rebuild_base`: rebuild the base here, for a kind whose base the harness builds (the toy one)."""

    def dry_run_checks(self) -> None:
        """Checks `harness run --dry-run` adds once the world is loaded (e.g. prompts within the model's context)."""

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


def _resolve(ref: str) -> Any:
    """The object a "module:Attr" string names, its module imported now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def world_class(kind: str) -> type[World]:
    """The World class of a kind (imported on first use); HarnessError listing the kinds otherwise."""
    if not isinstance(kind, str) or kind not in WORLD_KINDS:
        raise unknown("world kind", str(kind), WORLD_KINDS, "Set world.kind.")
    return _resolve(WORLD_KINDS[kind])


def world_kind(value: Any) -> str:
    """The kind of a world config or mapping (DEFAULT_KIND where it names none)."""
    return value.get("kind", DEFAULT_KIND) if isinstance(value, dict) else getattr(value, "kind", DEFAULT_KIND)


def validate_world(value: Any) -> Any:
    """A world mapping validated as its kind's Config (a config of that class is kept as it is)."""
    cls = world_class(world_kind(value)).Config
    return value if isinstance(value, cls) else cls.model_validate(value)


def build_world(cfg) -> World:
    """The World a validated world config describes, built by its kind's class."""
    return world_class(cfg.kind)(cfg)


def preset_files() -> dict[str, Path]:
    """Shipped world presets of every kind: name -> YAML file."""
    return {p.stem: p for p in sorted(Path(_resolve(PRESETS)).glob("*.yaml"))}
