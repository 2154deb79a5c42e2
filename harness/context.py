"""The context a method sees: policy, frozen base, sampler, world, tokenizer, its config, and engine services."""
from __future__ import annotations

import math
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from harness.cost import Cost
from harness.data import Example, TrainData
from harness.modeling import DTYPES, load_model
from harness.sampler import HFSampler, Sampler


class Context:
    """Everything a method may use; it never touches the optimizer, MLflow or Optuna directly."""

    def __init__(self, *, run_cfg, method_cfg, world, policy, tokenizer, base_path: str, trainer,
                 sampler: Sampler, log: Callable[[dict, int], None]):
        self.run_cfg, self.cfg, self.world = run_cfg, method_cfg, world
        self.policy, self.tokenizer, self.base_path = policy, tokenizer, base_path
        self.trainer, self.sampler, self._log = trainer, sampler, log
        self._scratch = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        self._scratch_dirs = [self._scratch]
        self.extra_stats: dict[str, float] = {}
        sampler.cost = trainer.cost  # one counter per run, so no pass can go uncounted

    @property
    def cost(self) -> Cost:
        """The run's FLOP counter: methods report their extra forward passes (reference, π_old, ...) into it."""
        return self.trainer.cost

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

    @property
    def score_batch_size(self) -> int:
        """Sequences per no-gradient scoring pass (reference and π_old log-probs): eval.score_batch_size."""
        return self.run_cfg.score_batch_size

    @cached_property
    def base(self) -> torch.nn.Module:
        """A frozen copy of the base model in `train.frozen_dtype`, loaded on first use."""
        model, _ = load_model(self.base_path, dtype=self.run_cfg.train.frozen_dtype, device=self.run_cfg.train.device,
                              **self.world.load_kwargs())
        model.eval().requires_grad_(False)
        return model

    def my_share(self, examples: list[Example]) -> list[Example]:
        """The examples of a one-step batch this process trains (all of them in one process; `examples[rank::N]`
        with N ranks): per-example scoring for the loss (reference, π_old log-probs) need only cover these."""
        from harness import distributed
        return distributed.shard(examples)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def example(self, prompt: str, response: str, **kw) -> Example:
        """A training example from prompt and response text (the end token is appended)."""
        return Example(self.encode(prompt), self.encode(response) + [self.tokenizer.eos_token_id], **kw)

    def reset_to_base(self, horizon: int | None = None) -> None:
        """Load the base weights into the policy and restart the optimizer and schedule (over `horizon` steps)."""
        if self.run_cfg.train.frozen_dtype == "float32":
            state = self.base.state_dict()
        else:  # the frozen copy was rounded to a lower precision: the policy restarts from the exact weights
            state = load_model(self.base_path, device=self.run_cfg.train.device,
                               **self.world.load_kwargs())[0].state_dict()
        with torch.no_grad():
            for name, p in self.policy.state_dict().items():
                p.copy_(state[name])
        self.trainer.reset_optimizer(horizon)

    def scratch_dir(self, root: str | None = None) -> Path:
        """A folder for scratch checkpoints: a fresh one under `root`, else the run's; removed by `close`."""
        if root is None:
            return self._scratch
        Path(root).mkdir(parents=True, exist_ok=True)
        self._scratch_dirs.append(Path(tempfile.mkdtemp(prefix="harness-ckpt-", dir=root)))
        return self._scratch_dirs[-1]

    def save_checkpoint(self, name: str, dtype: torch.dtype | None = None, folder: Path | None = None) -> Path:
        """Save the policy (safetensors, cast to `dtype` if given) in `folder` (the run's scratch); returns its path."""
        path = (folder or self._scratch) / name
        state = None if dtype is None else {k: v.to(dtype) for k, v in self.policy.state_dict().items()}
        self.policy.save_pretrained(path, state_dict=state)
        return path

    def load_checkpoint(self, path: Path) -> torch.nn.Module:
        """A frozen model (in `train.frozen_dtype`) from a checkpoint saved by `save_checkpoint`."""
        model = type(self.policy).from_pretrained(path, dtype=DTYPES[self.run_cfg.train.frozen_dtype])
        model = model.to(self.run_cfg.train.device)
        return model.eval().requires_grad_(False)

    def sampler_for(self, path: Path | str, load: Callable[[], torch.nn.Module]) -> Sampler:
        """A sampler over a saved model (a checkpoint, or the base): the run's vLLM engine loads the folder; with
        transformers, `load()` gives the frozen model to sample from."""
        if hasattr(self.sampler, "from_checkpoint"):
            return self.sampler.from_checkpoint(path)
        return HFSampler(load(), self.tokenizer, self.sampler.batch_size, self.cost, seed=self.run_cfg.train.seed,
                         stream=Path(path).name)  # its own draws, not the run sampler's

    def delete_checkpoint(self, path: Path) -> None:
        """Free a checkpoint's disk space as soon as it is no longer needed."""
        shutil.rmtree(path, ignore_errors=True)

    def draw_batches(self, data: TrainData, steps: int) -> list[list[Example]]:
        """The batches of `steps` updates cycling through `data`, drawn now with the run's rng (train.batch_size)."""
        if not data.examples:
            return []
        size = data.batch_size or self.run_cfg.train.batch_size
        passes = math.ceil(steps / math.ceil(len(data.examples) / size))
        cycled = TrainData(data.examples, size, data.shuffle, passes=passes, max_steps=steps)
        return list(cycled.steps(size, self.rng))

    def train_steps(self, batches: list[list[Example]], loss_fn: Callable, prefix: str,
                    on_step: Callable[[int], None] | None = None, reduction: str = "token",
                    lr: float | None = None) -> None:
        """One engine update per batch, outside the evaluated trajectory (e.g. TMS's teacher run).

        The phase is a training run of its own: a fresh optimizer at peak `lr` (None: train.lr) whose schedule
        spans the batches. Its tokens count as the cost kind "teacher".
        """
        if not batches:
            return
        self.trainer.reset_optimizer(len(batches), lr)
        for done, examples in enumerate(batches, 1):
            stats = self.trainer.update(examples, loss_fn, self, reduction, kind="teacher")
            self._log({f"{prefix}/{k}": v for k, v in stats.items()}, done)
            if on_step is not None:
                on_step(done)

    def log(self, stats: dict[str, float]) -> None:
        """Method statistics logged at the current step (e.g. coverage of a sampling round)."""
        self.extra_stats.update(stats)
        self._log({f"train/{k}": v for k, v in stats.items()}, self.step)

    def close(self) -> None:
        """Remove scratch checkpoints."""
        for d in self._scratch_dirs:
            shutil.rmtree(d, ignore_errors=True)
