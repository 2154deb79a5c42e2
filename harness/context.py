"""The context a method sees: policy, frozen base, sampler, world, tokenizer, its config, and engine services."""
from __future__ import annotations

import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from harness.data import Example, TrainData
from harness.modeling import load_model
from harness.sampler import HFSampler


class Context:
    """Everything a method may use; it never touches the optimizer, MLflow or Optuna directly."""

    def __init__(self, *, run_cfg, method_cfg, world, policy, tokenizer, base_path: str, trainer,
                 sampler: HFSampler, log: Callable[[dict, int], None]):
        self.run_cfg, self.cfg, self.world = run_cfg, method_cfg, world
        self.policy, self.tokenizer, self.base_path = policy, tokenizer, base_path
        self.trainer, self.sampler, self._log = trainer, sampler, log
        self._scratch = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        self.extra_stats: dict[str, float] = {}

    @property
    def step(self) -> int:
        """Optimizer steps taken so far in the run."""
        return self.trainer.step

    @property
    def max_steps(self) -> int:
        """The run's step budget."""
        return self.trainer.cfg.max_steps

    @property
    def rng(self):
        """The run's seeded numpy generator (data order, mixture draws)."""
        return self.trainer.rng

    @cached_property
    def base(self) -> torch.nn.Module:
        """A frozen copy of the base model, loaded on first use."""
        model, _ = load_model(self.base_path, device=self.run_cfg.train.device)
        model.eval().requires_grad_(False)
        return model

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def example(self, prompt: str, response: str, **kw) -> Example:
        """A training example from prompt and response text (the end token is appended)."""
        return Example(self.encode(prompt), self.encode(response) + [self.tokenizer.eos_token_id], **kw)

    def reset_to_base(self, horizon: int | None = None) -> None:
        """Load the base weights into the policy and restart the optimizer and schedule (over `horizon` steps)."""
        state = self.base.state_dict()
        with torch.no_grad():
            for name, p in self.policy.state_dict().items():
                p.copy_(state[name])
        self.trainer.reset_optimizer(horizon)

    def save_checkpoint(self, name: str) -> Path:
        """Save the policy (safetensors) in the run's scratch folder; returns its path."""
        path = self._scratch / name
        self.policy.save_pretrained(path)
        return path

    def load_checkpoint(self, path: Path) -> torch.nn.Module:
        """A frozen model from a checkpoint saved by `save_checkpoint`."""
        model = type(self.policy).from_pretrained(path).to(self.run_cfg.train.device)
        return model.eval().requires_grad_(False)

    def delete_checkpoint(self, path: Path) -> None:
        """Free a checkpoint's disk space as soon as it is no longer needed."""
        shutil.rmtree(path, ignore_errors=True)

    def train_steps(self, data: TrainData, loss_fn: Callable, steps: int, prefix: str,
                    on_step: Callable[[int], None] | None = None, reduction: str = "token") -> None:
        """Run `steps` engine updates outside the evaluated trajectory (e.g. TMS's teacher run).

        The phase is a training run of its own: it starts a fresh optimizer whose schedule spans `steps`.
        """
        if not data.examples:
            return
        self.trainer.reset_optimizer(steps)
        done = 0
        while done < steps:
            for examples in data.steps(self.run_cfg.train.batch_size, self.rng):
                stats = self.trainer.update(examples, loss_fn, self, reduction)
                done += 1
                self._log({f"{prefix}/{k}": v for k, v in stats.items()}, done)
                if on_step is not None:
                    on_step(done)
                if done >= steps:
                    return

    def log(self, stats: dict[str, float]) -> None:
        """Method statistics logged at the current step (e.g. coverage of a sampling round)."""
        self.extra_stats.update(stats)
        self._log({f"train/{k}": v for k, v in stats.items()}, self.step)

    def close(self) -> None:
        """Remove scratch checkpoints."""
        shutil.rmtree(self._scratch, ignore_errors=True)
