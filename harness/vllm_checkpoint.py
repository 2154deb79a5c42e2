"""A saved checkpoint sampled through a VLLMSampler's engine: its folder's weights pushed in place of the policy's.

TMS samples its teacher checkpoints and Self-SFT its frozen base this way (`ctx.sampler_for`), so no second engine is
built; the policy's weights go back in on the parent's next call (its push key differs from the checkpoint's).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from harness.cost import Cost
from harness.errors import HarnessError
from harness.sampler import Completion

if TYPE_CHECKING:
    from harness.vllm_sampler import VLLMSampler


def checkpoint_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in a save_pretrained folder's safetensors files."""
    from safetensors import safe_open
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise HarnessError(f"no *.safetensors in {str(folder)!r}; save the checkpoint with save_pretrained")
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for k in fh.keys():
                yield k, fh.get_tensor(k)


def checkpoint_key(folder: Path) -> tuple:
    """A saved folder's identity: its path and its weight files' modification times (a re-save is a new key)."""
    folder = Path(folder).resolve()
    return ("checkpoint", str(folder), tuple(f.stat().st_mtime_ns for f in sorted(folder.glob("*.safetensors"))))


class CheckpointSampler:
    """A Sampler over a saved folder, sharing a VLLMSampler's engine; its tokens go to the same cost counter."""

    def __init__(self, parent: VLLMSampler, path: Path):
        self.parent, self.path, self.gen_seconds = parent, path, 0.0

    @property
    def cost(self) -> Cost:
        """The parent's (the run's) counter."""
        return self.parent.cost

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, *, logprobs: bool = False,
                 indices: list[int] | None = None) -> list[list[Completion]]:
        """`n` completions per prompt from the checkpoint (`indices`: as VLLMSampler.generate's); the policy is
        pushed back on the parent's next call."""
        start = time.perf_counter()
        try:
            return self.parent.sample_weights(checkpoint_key(self.path), lambda: checkpoint_weights(self.path),
                                              prompts, n, temperature, top_p, max_new_tokens, logprobs, indices)
        finally:
            self.gen_seconds += time.perf_counter() - start
