"""The context a method sees: policy, frozen base, sampler, world, tokenizer, its config, and engine services."""
from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import torch

from harness import metric_names as N
from harness.cost import Cost
from harness.data import Example, TrainData
from harness.fsdp import plain_class
from harness.modeling import DTYPES, load_model
from harness.parallel import Parallel
from harness.sampler import HFSampler, Sampler, rank_sharded


class Context:
    """Everything a method may use; it never touches the optimizer, MLflow or Optuna directly."""

    def __init__(self, *, run_cfg, world, policy, tokenizer, base_path: str, trainer,
                 sampler: Sampler, log: Callable[[dict, int], None], parallel: Parallel | None = None):
        """`parallel`: the run's ranks (default: the trainer's)."""
        self.run_cfg, self.cfg, self.world = run_cfg, run_cfg.method_args, world
        self.policy, self.tokenizer, self.base_path = policy, tokenizer, base_path
        self.trainer, self.sampler, self._log = trainer, sampler, log
        self._scratch = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        self._scratch_dirs = [self._scratch]
        self.extra_stats: dict[str, float] = {}
        sampler.cost = trainer.cost  # one counter per run, so no pass can go uncounted
        self.parallel = parallel if parallel is not None else trainer.parallel
        self.parallel.copies_from(self._load_cpu)  # rank 0's unsharded copies under train.parallel=fsdp

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
        """A frozen copy of the base model in `train.frozen_dtype`, loaded on first use (sharded like the policy)."""
        model, _ = load_model(self.base_path, dtype=self.run_cfg.train.frozen_dtype, device=self.run_cfg.train.device,
                              **self.world.load_kwargs())
        model.eval().requires_grad_(False)
        return self.parallel.frozen(model)

    @property
    def sharded(self) -> bool:
        """Whether the policy is sharded over the ranks (train.parallel=fsdp under several processes)."""
        return self.parallel.sharded

    @property
    def eval_policy(self) -> torch.nn.Module:
        """The policy as rank 0 evaluates it alone: itself, or sharded, its copy gathered at this evaluation point."""
        return self.parallel.eval_policy(self.policy)

    @property
    def eval_base(self) -> torch.nn.Module:
        """The frozen base as rank 0 evaluates against it alone: `base`, or sharded, an unsharded copy from disk."""
        return self.parallel.eval_base(lambda: self.base)

    def _load_cpu(self, dtype: str) -> torch.nn.Module:
        """A fresh unsharded copy of the base on the CPU, in `dtype`."""
        return load_model(self.base_path, dtype=dtype, device="cpu", **self.world.load_kwargs())[0]

    def my_share(self, examples: list[Example]) -> list[Example]:
        """The examples of a one-step batch this process trains (all of them in one process; `examples[rank::N]`
        with N ranks): per-example scoring for the loss (reference, π_old log-probs) need only cover these.
        Sharded, a shorter share is padded with the step's last example, so every rank runs as many passes."""
        return self.parallel.padded_share(examples)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def example(self, prompt: str, response: str, **kw) -> Example:
        """A training example from prompt and response text (the end token is appended)."""
        return Example(self.encode(prompt), self.encode(response) + [self.tokenizer.eos_token_id], **kw)

    def reset_to_base(self, horizon: int | None = None) -> None:
        """Load the base weights into the policy and restart the optimizer and schedule (over `horizon` steps)."""
        if self.run_cfg.train.frozen_dtype == "float32":
            self.parallel.settle(self.base)
            state = self.base.state_dict()  # sharded like the policy's under fsdp: a copy shard to shard
        else:  # the frozen copy was rounded to a lower precision: the policy restarts from the exact weights
            state = load_model(self.base_path, device=self.run_cfg.train.device,
                               **self.world.load_kwargs())[0].state_dict()
        self.parallel.copy_state(self.policy, state)
        self.trainer.reset_optimizer(horizon)

    def scratch_dir(self, root: str | None = None) -> Path:
        """A folder for scratch checkpoints: a fresh one under `root`, else the run's; removed by `close`."""
        if root is None:
            return self._scratch
        Path(root).mkdir(parents=True, exist_ok=True)
        self._scratch_dirs.append(Path(tempfile.mkdtemp(prefix="harness-ckpt-", dir=root)))
        return self._scratch_dirs[-1]

    def save_checkpoint(self, name: str, dtype: torch.dtype | None = None, folder: Path | None = None) -> Path:
        """Save the policy (safetensors, cast to `dtype` if given) in `folder` (the run's scratch); returns its path.

        Sharded, every rank calls it (all gather, rank 0 writes, every rank gets rank 0's path), except in rank-0-only
        code (`distributed.solo`: a record evaluation), which writes the copy gathered at this evaluation point.
        """
        path = (folder or self._scratch) / name

        def write(model: torch.nn.Module) -> None:
            state = None if dtype is None else {k: v.to(dtype) for k, v in model.state_dict().items()}
            model.save_pretrained(path, state_dict=state)
        return self.parallel.save(self.policy, self.step, path, write)

    def load_checkpoint(self, path: Path) -> torch.nn.Module:
        """A frozen model (in `train.frozen_dtype`) from a checkpoint saved by `save_checkpoint`."""
        model = plain_class(self.policy).from_pretrained(path, dtype=DTYPES[self.run_cfg.train.frozen_dtype])
        model = model.to(self.run_cfg.train.device)
        return model.eval().requires_grad_(False)

    def sampler_for(self, path: Path | str, load: Callable[[], torch.nn.Module]) -> Sampler:
        """A sampler over a saved model (a checkpoint, or the base): the run's vLLM engine loads the folder; with
        transformers, `load()` gives the frozen model to sample from. Under several ranks each samples its share of
        every call (in step with the others where the model is sharded, as `base` is under FSDP)."""
        if hasattr(self.sampler, "from_checkpoint"):
            return rank_sharded(self.sampler.from_checkpoint(path), self.parallel)
        model = load()
        return rank_sharded(HFSampler(model, self.tokenizer, self.sampler.batch_size, self.cost,
                                      seed=self.run_cfg.train.seed, stream=Path(path).name),  # its own draws
                            self.parallel, lockstep=self.parallel.lockstep(model))

    def delete_checkpoint(self, path: Path) -> None:
        """Free a checkpoint's disk space as soon as it is no longer needed (sharded: rank 0's, once all are done)."""
        if self.parallel.removes_files():
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
        self._log({N.TRAIN + k: v for k, v in stats.items()}, self.step)

    @contextmanager
    def recording(self) -> Iterator[list[tuple[dict, int]]]:
        """Yields a list that collects (a copy of the metrics, step) of everything logged inside the block.

        What is logged still reaches the run's log; harness.phase_cache stores the list to replay it later.
        """
        logged: list[tuple[dict, int]] = []
        log = self._log

        def record(metrics: dict, step: int) -> None:
            logged.append((dict(metrics), step))
            log(metrics, step)
        self._log = record
        try:
            yield logged
        finally:
            self._log = log

    def replay(self, logged: list[tuple[dict, int]]) -> None:
        """Log again, unchanged and at their own steps, the metrics a `recording()` block collected."""
        for metrics, step in logged:
            self._log(metrics, step)

    def close(self) -> None:
        """Remove scratch checkpoints."""
        for d in self._scratch_dirs:
            shutil.rmtree(d, ignore_errors=True)
