"""The Method contract and the method registry (plugins in `methods/` register at their definition site).

A method answers two questions and the engine does the rest:
  data(ctx, phase) -> TrainData | None   what to train on next (None: training is over)
  loss(ctx, batch) -> LossOutput          per-token losses on a batch the engine has run forward

The engine reduces per-token losses once per optimizer step: with
`reduction = "token"` it divides the step's summed loss by the number of
trained tokens in the step; with `"sequence"` by the number of sequences (the
method then pre-scales each sequence's tokens, e.g. by 1/|y| or 1/L_max).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.context import Context
    from harness.data import Batch, TrainData


class MethodConfig(BaseModel):
    """Base of every method's typed hyper-parameters (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


@dataclass(frozen=True)
class SweepParam:
    """A declared search dimension: a float range (log or linear) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    choices: tuple[Any, ...] | None = None


@dataclass
class LossOutput:
    """Per-token losses [B, T-1] (zero where untrained) and detached statistics to log."""

    token_loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class: subclasses set the class attributes and implement `data` and `loss`."""

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str]
    order: ClassVar[int] = 100
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Search space over config keys (`train.lr`, `<method>.<field>`); the learning rate is always swept.
    sweep: ClassVar[dict[str, SweepParam]] = {"train.lr": SweepParam(1e-5, 3e-4)}
    reduction: Literal["token", "sequence"] = "token"
    # Whether `loss` differentiates `batch.entropy`. Off, the engine computes entropies without a graph (they
    # still fill `batch.entropy` for φ and statistics), which keeps the backward free of vocabulary-sized terms;
    # a method that puts the entropy into its loss must set it, or that term silently gets no gradient.
    needs_entropy_grad: ClassVar[bool] = False
    # The method's own settings for a smoke run (two steps on micro in about a second): tests and check scripts
    # read them from the registry, so a new method needs no edit outside its file.
    smoke: ClassVar[dict[str, Any]] = {}
    # Whether the method trains on the verifier's reward of its own samples (RL): a world whose target cannot score
    # sampled text (a multiple-choice task, scored by log-likelihood) refuses such a method before anything runs.
    rewarded: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg

    def data(self, ctx: "Context", phase: int) -> "TrainData | None":
        """Examples for the next stretch of training; `phase` counts earlier calls."""
        raise NotImplementedError

    def loss(self, ctx: "Context", batch: "Batch") -> LossOutput:
        """Per-token losses on `batch` (whose `logp`/`entropy` the engine has filled)."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its `name`."""
    return METHODS.register(cls.name)(cls)


def method_names() -> list[str]:
    """Registered method keys in their canonical (report) order."""
    from methods import load_all
    load_all()
    return sorted(METHODS.names(), key=lambda n: (METHODS.get(n).order, n))


def get_method(name: str) -> type[Method]:
    """The Method class registered as `name` (did-you-mean error otherwise)."""
    from methods import load_all
    load_all()
    return METHODS.get(name)
