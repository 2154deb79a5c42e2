"""FSDP2 training over N processes (`train.parallel=fsdp`): each rank keeps 1/N of the weights, gradients and AdamW state.

What is sharded and how (`shard`): `fully_shard` on every decoder layer, then on the causal LM itself (the root,
which owns the embeddings, final norm and output head, tied or not). Precision is left to the run's autocast
(harness.logprobs checks a model's decoder/head split with autocast off: a cast of a gathered weight made without
gradient stays in the enclosing autocast region's cache, and the training pass reusing it lost its gradient).
Gradients are SUMMED over ranks, as in `harness.distributed` (each rank backpropagates sum(its tokens' losses) over
the whole step's denominator): divide factor 1 and sum-only collectives, so gloo and NCCL behave alike. They are
reduce-scattered after every micro-batch (FSDP2's default): `set_requires_gradient_sync(False)` would keep every
layer's unsharded gradient alive across micro-batches, i.e. a full replica of the gradients, which is what FSDP is
chosen to avoid.

The engine scores with the decoder and the head called separately (harness.logprobs), bypassing the causal LM's
forward, so the root's hooks (which gather the embeddings, norm and head) would never run. `shard` therefore gives
the model a `scoring_decoder` entry point registered with `register_fsdp_forward_method`: it runs the decoder
inside the root's pre/post-forward hooks. FSDP2 does not reshard the root after its forward, so the head (or the
tied embedding matrix) stays gathered for the chunked head that follows, and for its recomputation in the
backward; the root's post-backward callback then reduce-scatters its gradients and reshards it. `settle` reshards
it where the sharded parameters themselves are needed (building the optimizer, reading or writing a state dict).

Every rank must run the same forward and backward passes (each gathers layers collectively): rollouts are
decoded from identical weights, prompts and per-row draws on every rank, so harness.greedy's loop stops at the same
step everywhere (transformers' generate also gets `synced_gpus`); the engine pads a rank's micro-batches to the
longest share's count with zero-weighted filler passes, and `Context.my_share` pads a rank's scoring share the same
way (harness.parallel decides all of this: `Step.micro_batches`, `Parallel.padded_share`). Ranks that decoded differently (a nondeterministic kernel) would wait
for each other's gathers until HARNESS_DIST_TIMEOUT_S, where DDP's `check_same` raises at once.

Evaluation runs on rank 0 alone, which a sharded model cannot do: at each evaluation point every rank joins
`full_state` (the full state dict, gathered to rank 0's CPU) and rank 0 loads it into an unsharded copy of the
policy (`Twin`, in `train.fsdp_eval_dtype`) that evaluation, PLD, KL to the base and checkpoints read; the base it
is compared with is an unsharded copy loaded from disk (in `train.frozen_dtype`). Both stay in CPU memory between
evaluations and visit rank 0's device only while it evaluates, next to its shards: at 7.6B parameters on 4 ranks
(a bf16 base) ~32 GiB of shards + a 28 GiB fp32 policy copy + a 14 GiB base copy, 74 of an 80 GB GPU's 74.5 GiB
before activations; with a bf16 policy copy ~60 GiB (`eval_memory`, printed by `harness run --dry-run`). Checkpoints are full weights written by rank 0 (no sharded checkpoints), in the copy's dtype.

Tested on CPU with 2 gloo processes (tests/test_fsdp.py). On a GPU, one NCCL rank (an H200, torch 2.11) gave the
unsharded model's gradients bit for bit, with and without bf16 autocast, tied or untied head, chunked or not; N GPUs
with NCCL have not run.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import torch

from harness import distributed
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.config import TrainConfig


def check(cfg: TrainConfig) -> None:
    """One-line HarnessError for settings not supported together with FSDP."""
    if cfg.compile:
        raise HarnessError("train.compile=true is not supported with train.parallel=fsdp; set one of them off")
    if cfg.sampler == "vllm":
        raise HarnessError("train.sampler=vllm is not supported with train.parallel=fsdp (its weight push reads "
                           "unsharded parameters); use train.sampler=hf or train.parallel=ddp")


def is_sharded(model: torch.nn.Module | None) -> bool:
    """Whether `model` is an FSDP2 module."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def plain_class(model: torch.nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass; `from_pretrained` needs the original)."""
    cls = type(model)
    return cls.__mro__[cls._orig_cls_mro_index] if is_sharded(model) else cls


def _call(module: torch.nn.Module, **kwargs: Any) -> Any:
    """`module(**kwargs)`: the body of the root's registered scoring entry point."""
    return module(**kwargs)


def shard(model: torch.nn.Module, frozen: bool = False) -> torch.nn.Module:
    """Shard `model` in place over every rank (per decoder layer, then the root); returns it.

    Every rank must call this, at the same point, on identical weights. `frozen`: a model that is never trained
    (the reference): no gradient settings apply, and its root stays gathered after its first use.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    from harness.logprobs import SCORING_DECODER, eval_mode, forget
    device = next(model.parameters()).device
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise HarnessError(f"train.parallel=fsdp needs a causal LM whose decoder has `layers` "
                           f"(transformers' Llama/Qwen2 layout); {type(model).__name__} has none")
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if not frozen:
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
    setattr(model, SCORING_DECODER, functools.partial(_call, decoder))
    register_fsdp_forward_method(model, SCORING_DECODER)
    forget(model)  # a split found before sharding (rank 0 scored the base with it) would call the bare decoder
    model._is_fsdp_managed_module = True  # transformers' generate then keeps the ranks' decode steps in lockstep
    # One tiny forward outside inference mode: FSDP2 allocates its gathered buffers on first use, and buffers made
    # under the sampler's inference_mode could not be written by a later training forward. Eval mode: no dropout
    # draw, so the seeded run's random stream is untouched.
    with torch.no_grad(), eval_mode(model):
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    settle(model)
    return model


def settle(model: torch.nn.Module) -> None:
    """Reshard the root, so `parameters()` and `state_dict()` give the sharded tensors (no-op unsharded)."""
    if is_sharded(model):
        model.reshard()


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective), or `t` itself."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict gathered to rank 0's CPU ({} on the other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    settle(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def copy_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's shards on every rank: full tensors (each rank keeps its slice, no
    communication) or DTensors sharded like the model's (the sharded base)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    settle(model)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            src = state[name]
            if isinstance(p, DTensor) and not isinstance(src, DTensor):
                src = distribute_tensor(src.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(src)


_BYTES = {"float32": 4, "bfloat16": 2}


def eval_dtypes(cfg: TrainConfig) -> tuple[str, str]:
    """(policy copy, base copy) dtypes of rank 0's unsharded evaluation copies (`train.fsdp_eval_dtype`)."""
    return cfg.fsdp_eval_dtype, cfg.frozen_dtype


def eval_memory(n_params: int, ranks: int, cfg: TrainConfig) -> dict[str, float]:
    """Bytes on rank 0's GPU while it evaluates, by part (activations and KV cache not counted).

    Its shards: fp32 weights, gradients and AdamW's two moments (16 bytes per parameter over `ranks`) and the
    sharded base in `frozen_dtype`; then the unsharded copies of the policy and the base (`eval_dtypes`)."""
    policy, base = eval_dtypes(cfg)
    return {"shards": n_params * (16 + _BYTES[cfg.frozen_dtype]) / ranks, "policy copy": n_params * _BYTES[policy],
            "base copy": n_params * _BYTES[base]}


def eval_memory_line(n_params: int, ranks: int, cfg: TrainConfig, gpu_bytes: int | None, gpu: str) -> str:
    """The dry-run's estimate of rank 0's evaluation memory, against the GPU present (or saying none is)."""
    parts = eval_memory(n_params, ranks, cfg)
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    policy, base = eval_dtypes(cfg)
    text = (f"fsdp evaluation on rank 0 of {ranks}: ~{gib(sum(parts.values()))} = shards {gib(parts['shards'])} + "
            f"policy copy {gib(parts['policy copy'])} ({policy}) + base copy {gib(parts['base copy'])} ({base}), "
            f"before activations")
    if gpu_bytes is None:
        return text + "; no GPU here to compare with"
    if sum(parts.values()) <= 0.9 * gpu_bytes:
        return text + f"; fits the {gib(gpu_bytes)} of {gpu}"
    return text + (f"; does NOT fit the {gib(gpu_bytes)} of {gpu}: set train.fsdp_eval_dtype=bfloat16 and "
                   f"train.frozen_dtype=bfloat16, or use more ranks")


def dry_run_line(cfg: TrainConfig, model_path: str) -> str:
    """`eval_memory_line` for the model saved in `model_path` (parameters counted on the meta device), the ranks
    launched (WORLD_SIZE) or else the GPUs present, against the first GPU's memory."""
    import os

    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path)).parameters())
    cuda = torch.cuda.is_available()
    ranks = int(os.environ.get("WORLD_SIZE") or (torch.cuda.device_count() if cuda else 1))
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else None
    return eval_memory_line(n, max(ranks, 1), cfg, gpu_bytes, torch.cuda.get_device_name(0) if cuda else "")


class Twin:
    """Rank 0's unsharded copies of the sharded policy and of the base, for evaluation and checkpoints.

    `load(dtype)` gives a fresh unsharded model on the CPU; the copies are loaded once and kept on the CPU
    between evaluations (`place`).
    """

    def __init__(self, load: Callable[[str], torch.nn.Module], policy_dtype: str, base_dtype: str) -> None:
        self._load, self._dtypes = load, (policy_dtype, base_dtype)
        self._policy: torch.nn.Module | None = None
        self._base: torch.nn.Module | None = None
        self.step: int | None = None  # the optimizer step whose weights the policy copy holds

    @property
    def policy(self) -> torch.nn.Module:
        """The policy copy (the weights of `step`)."""
        if self._policy is None or self.step is None:
            raise HarnessError("no gathered copy of the sharded policy yet: under train.parallel=fsdp rank 0 can "
                               "only use the weights of the last evaluation point on its own")
        return self._policy

    @property
    def base(self) -> torch.nn.Module:
        """The frozen base, unsharded, loaded on first use."""
        if self._base is None:
            self._base = self._load(self._dtypes[1]).eval().requires_grad_(False)
        return self._base

    def refresh(self, state: dict[str, torch.Tensor], step: int) -> None:
        """Load the gathered weights of `step` into the policy copy (rank 0)."""
        if self._policy is None:
            self._policy = self._load(self._dtypes[0])
        self._policy.load_state_dict(state)
        self.step = step

    def place(self, device: str | torch.device) -> None:
        """Move the copies that exist to `device`: rank 0's GPU while it evaluates, the CPU otherwise."""
        for m in (self._policy, self._base):
            if m is not None:
                m.to(device)
