"""vLLM generation backend: one in-process engine that samples the live policy, its weights pushed in when changed.

Same contract as harness.sampler.HFSampler: token-id prompts in, `n` Completions per prompt in prompt
order, response ids cut after the tokenizer's end token (kept), text decoded with special tokens
skipped, every prompt token of every sample (prefill) and every generated token into `cost`.
Written against vLLM 0.33 as read from its source (shared/REAL-SCALE-NOTES.md §1): `LLM` built in
process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so its torch module is reachable, `TokensPrompt` dicts,
explicit `SamplingParams`, `load_weights` + `reset_prefix_cache` to push weights, optional sleep mode.
Importing this module does not import vllm; the pure helpers below are tested without it. Sampling a saved
checkpoint on the same engine (TMS's checkpoints, Self-SFT's frozen base) is harness.vllm_checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from harness.cost import Cost
from harness.errors import HarnessError
from harness.metrics import weights_version
from harness.sampler import Completion

if TYPE_CHECKING:
    from harness.vllm_checkpoint import CheckpointSampler

# Wrappers rename parameters; vLLM's load_weights wants HF checkpoint names (notes §1.4).
_INNER = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")  # anywhere in the name
_LEADING = ("base_model.model.", "module.")  # PEFT's and DDP's outer wrappers


@dataclass
class ScoredCompletion(Completion):
    """A Completion with each response token's log-prob (vLLM's default raw log-probs: before temperature, top-p)."""

    logprobs: list[float] | None = None


def strip_wrapper_prefixes(name: str) -> str:
    """The HF checkpoint name of a (possibly wrapped) parameter name."""
    for part in _INNER:
        name = name.replace(part, "")
    while name.startswith(_LEADING):
        name = name[len(next(p for p in _LEADING if name.startswith(p))):]
    return name.replace(".base_layer", "")


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of every parameter once (tied embeddings once, as named_parameters gives them)."""
    for name, p in model.named_parameters():
        if "lora_" in name:  # pushing the base weights alone would sample a different model, silently
            raise HarnessError(f"parameter {name!r} is an unmerged LoRA adapter; merge adapters (merge_and_unload) "
                               f"before sampling with sampler=vllm")
        yield strip_wrapper_prefixes(name), p.detach()


_OPTIMIZER_STEPS = [0]  # optimizer steps taken in this process (any optimizer): bumped by the hook below


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


# Version counters alone miss updates: torch's fused AdamW kernel writes the parameters without bumping their
# `_version` (torch 2.13, CPU and CUDA), and foreach ops on DTensors bump the local shard's, not the wrapper's.
# Every optimizer step of the process is counted instead: a step of some other model costs one needless push.
register_optimizer_step_post_hook(_count_step)


def weights_key(model: torch.nn.Module) -> tuple | None:
    """Changes whenever an optimizer steps, or a parameter is written in place or replaced; None where no version is
    kept (push always)."""
    versions = weights_version(model)
    if versions is None:
        return None
    return _OPTIMIZER_STEPS[0], versions, tuple(p.data_ptr() for p in model.parameters())


def request_seed(seed: int, call: int, index: int) -> int:
    """The seed of one prompt's request: a hash, so the n children's seeds (s, s+1, ...) of requests don't overlap.

    `index` is the prompt's index in the whole call, so a rank sampling a share of it (harness.sampler's
    RankShardedSampler) draws what one process would."""
    digest = hashlib.blake2b(f"{seed}/{call}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int | None,
                    logprobs: bool = False) -> dict:
    """vLLM SamplingParams arguments, all explicit (defaults: max_tokens=16; generation_config.json may add more).

    Greedy (temperature ≤ 0) asks for one sample: vLLM rejects n > 1 with greedy sampling, so the caller copies it.
    """
    if max_new_tokens < 1:
        raise HarnessError(f"max_new_tokens={max_new_tokens}; ask for at least 1 token")
    greedy = temperature <= 0
    return dict(n=1 if greedy else int(n), temperature=0.0 if greedy else float(temperature),
                top_p=1.0 if greedy else float(top_p), top_k=0, min_p=0.0, max_tokens=int(max_new_tokens),
                seed=None if greedy else seed, logprobs=0 if logprobs else None,
                detokenize=False)  # we decode with the tokenizer, as HFSampler does, so texts match exactly


def trim(token_ids: Iterable[int], eos: int, logprobs: list[float] | None = None
         ) -> tuple[list[int], bool, list[float] | None]:
    """(response ids cut after the first end token, whether it finished, the matching log-probs)."""
    ids = list(token_ids)
    if eos in ids:
        cut = ids.index(eos) + 1
        return ids[:cut], True, None if logprobs is None else logprobs[:cut]
    return ids, False, logprobs


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Run a block that seeds the global RNGs (vLLM's engine does, notes §1.3) and give the caller's streams back."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _vllm():
    """The vllm module, imported in-process mode; a one-line HarnessError where it is missing."""
    # The engine must run in this process: only then does llm_engine.model_executor (the push route) exist.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except ImportError:
        raise HarnessError("vllm is not installed; `pip install -e .[gpu]` on a CUDA machine, or use sampler=hf") \
            from None
    return vllm


def save_for_engine(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """Save the policy and tokenizer for the engine, with a generation config whose only end token is the tokenizer's.

    vLLM stops at every eos id of the folder's generation_config.json (also with generation_config="vllm"),
    HFSampler only at tokenizer.eos_token_id: one end token keeps the two backends' responses alike.
    """
    from transformers import GenerationConfig
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id).save_pretrained(folder)
    return folder


class VLLMSampler:
    """Samples the policy through one in-process vllm.LLM; a Sampler (harness.sampler) like HFSampler.

    `dtype`: the engine's weights (pushes cast the policy's: runs sample a bf16 copy of the fp32 policy, so
    `sampler=vllm` data are slightly off-policy; runs are tagged `sampler` and reports keep backends apart); `rank` ($RANK by default) varies the engine's own
    seed (every request carries its own, keyed by the prompt's index in the whole call); `engine_kwargs` go to
    vllm.LLM (enforce_eager, max_num_seqs, max_num_batched_tokens, logprobs_mode="processed_logprobs" for
    log-probs after temperature, distributed_executor_backend).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0, enable_sleep_mode: bool = False,
                 cost: Cost | None = None, dtype: str = "bfloat16", rank: int | None = None, batch_size: int = 512,
                 **engine_kwargs):
        vllm = _vllm()
        self.model, self.tok = model, tokenizer
        self.cost = cost if cost is not None else Cost()
        self.gen_seconds = self.push_seconds = 0.0
        self.batch_size = batch_size  # methods.common builds an HFSampler of this size for a model it is handed
        self.seed, self.rank = seed, int(os.environ.get("RANK", 0)) if rank is None else rank
        self.sleep_mode, self._calls, self._SamplingParams = enable_sleep_mode, 0, vllm.SamplingParams
        self._folder = tempfile.TemporaryDirectory(prefix="harness-vllm-")
        path = str(save_for_engine(model, tokenizer, Path(self._folder.name)))
        with kept_rng():  # the run's seeded streams must not depend on whether vLLM was built
            self.llm = vllm.LLM(model=path, tokenizer=path, dtype=dtype, seed=seed + self.rank,
                                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                enable_sleep_mode=enable_sleep_mode, generation_config="vllm", **engine_kwargs)
        self._loaded: tuple | None = weights_key(model)  # the engine holds what was just saved
        if enable_sleep_mode:
            self.llm.sleep(level=2)  # level 2 drops the weights: every wake pushes them again
            self._loaded = None

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, *, logprobs: bool = False,
                 indices: list[int] | None = None) -> list[list[Completion]]:
        """`n` completions per prompt, in prompt order, from the policy's current weights; `indices`: each prompt's
        index in the whole call (its seed's key; default 0, 1, ...)."""
        start = time.perf_counter()
        try:
            return self.sample_weights(weights_key(self.model), lambda: policy_weights(self.model), prompts, n,
                                       temperature, top_p, max_new_tokens, logprobs, indices)
        finally:
            self.gen_seconds += time.perf_counter() - start

    def from_checkpoint(self, path: str | Path) -> CheckpointSampler:
        """A Sampler over the model saved in `path` (same architecture), run on this engine instead of a new one."""
        from harness.vllm_checkpoint import CheckpointSampler
        return CheckpointSampler(self, Path(path))

    def close(self) -> None:
        """Drop the engine and its saved folder, and free its memory before anything builds a second engine."""
        import gc
        self.llm = None
        gc.collect()  # vLLM's engine objects refer to each other: without a collection the cycle keeps its memory
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
        self._folder.cleanup()

    def _push(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load weights by HF name into the engine's model; cached KV blocks of the old weights are dropped."""
        start = time.perf_counter()
        runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            runner_model.load_weights(weights)  # vLLM stacks q/k/v and gate/up itself
        self.llm.reset_prefix_cache()
        self.push_seconds += time.perf_counter() - start

    def sample_weights(self, key: tuple | None, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]],
                       prompts: list[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int,
                       logprobs: bool, indices: list[int] | None = None) -> list[list[Completion]]:
        """Make sure the engine holds the weights named by `key` (None: unknown, push), then sample: the policy's
        (VLLMSampler.generate) or a saved checkpoint's (harness.vllm_checkpoint)."""
        call, self._calls = self._calls, self._calls + 1
        keys = range(len(prompts)) if indices is None else indices
        params = [self._SamplingParams(**sampling_kwargs(n, temperature, top_p, max_new_tokens,
                                                         request_seed(self.seed, call, i), logprobs))
                  for i in keys]
        try:
            if self.sleep_mode:
                # What training grew into while vLLM slept stays reserved by torch's allocator unless given back:
                # wake_up could then run out of memory (TRL empties the cache before every wake for this reason).
                torch.cuda.empty_cache()
                self.llm.wake_up(tags=["weights"])  # before load_weights, or the writes go to unmapped memory
            if key is None or key != self._loaded:
                self._push(weights())
                self._loaded = key
            if self.sleep_mode:
                self.llm.wake_up(tags=["kv_cache"])
            outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=2)
                self._loaded = None
        return self._completions(prompts, outs, n if temperature <= 0 else 1)

    def _completions(self, prompts: list[list[int]], outs, copies: int) -> list[list[Completion]]:
        """Completions from vLLM's RequestOutputs (in prompt order); a greedy sample is copied `copies` times."""
        eos = self.tok.eos_token_id
        rows = []  # (prompt index, response ids, finished, log-probs)
        for i, req in enumerate(outs):
            for c in req.outputs:
                lps = None if c.logprobs is None else [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)]
                rows += [(i, *trim(c.token_ids, eos, lps))] * copies
        texts = self.tok.batch_decode([r for _, r, _, _ in rows], skip_special_tokens=True)
        result: list[list[Completion]] = [[] for _ in prompts]
        for (i, resp, finished, lps), text in zip(rows, texts):
            if lps is None:
                result[i].append(Completion(list(prompts[i]), list(resp), text, finished))
            else:
                result[i].append(ScoredCompletion(list(prompts[i]), list(resp), text, finished, list(lps)))
        self.cost.add("prefill", sum(len(prompts[i]) for i, *_ in rows))
        self.cost.add("gen", sum(len(r) for _, r, _, _ in rows))
        return result
