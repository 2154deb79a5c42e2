"""Typed run configuration: defaults < world preset < YAML preset file < `key=value` overrides.

Every field is documented once, as an attribute docstring; `harness run
--help-config` prints them. An unknown key or a wrong type is one
HarnessError naming the key and the valid ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from harness.errors import HarnessError, unknown
from harness.method import MethodConfig, get_method
from harness.settings_input import deep_merge, load_yaml_mapping, parse_overrides
from harness.world import DEFAULT_KIND, preset_files, validate_world, world_class, world_kind

VLLM_MAX_TEMPERATURE = 2.0  # vLLM 0.33's SamplingParams raises above it (shared/REAL-SCALE-NOTES.md §8)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class TrainConfig(_Strict):
    """The engine's optimisation settings, identical for every method (fairness)."""

    lr: float = Field(1e-4, gt=0)
    """Peak AdamW learning rate."""
    max_steps: int = Field(150, ge=1)
    """Budget: optimizer steps on the target task, the same for every method."""
    batch_size: int = Field(32, ge=1)
    """Sequences per optimizer step for SFT-type methods (RL methods set prompts x samples)."""
    micro_batch_size: int = Field(32, ge=1)
    """Sequences per forward/backward; gradients accumulate to the step (results do not depend on it)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of max_steps with linear warm-up."""
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """Learning-rate decay after warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Final learning rate as a fraction of the peak (cosine/linear)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of forward passes (bf16 is for GPUs)."""
    gradient_checkpointing: bool = False
    """Recompute the policy's layer activations in the backward instead of keeping them (less memory, ~1/3 more
    compute); the output head's log-softmax is always chunked and recomputed, whatever this says."""
    fused_adamw: bool = False
    """Use torch's fused AdamW kernel where the policy's device has one (a warning and the default kernel elsewhere);
    off by default because its rounding differs from the default kernel's."""
    compile: bool = False
    """Run the policy's training and scoring forward (decoder layers) through torch.compile with dynamic shapes
    (fused kernels; a compile of a minute or so per process on first use); sampling stays eager. Off by default:
    its rounding differs from eager's."""
    frozen_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of frozen model copies: the base (KL to base, reference log-probs, sampling from the base) and the
    checkpoints a method samples from (TMS). bfloat16 halves their memory; the trained policy always loads in
    float32 (AdamW updates need fp32 weights), and `reset_to_base` reloads float32 weights from disk."""
    fsdp_eval_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of rank 0's unsharded policy copy that evaluation and checkpoints read under `parallel=fsdp`; bfloat16
    halves it (what lets the 7B preset evaluate on 4 x 80 GB; `--dry-run` prints the estimate against the GPU)."""
    sampler: Literal["hf", "vllm"] = "hf"
    """Generation backend for rollouts and own samples: `hf` (transformers generate) or `vllm` (one in-process
    engine that receives the policy's weights when they changed; CUDA only, `make setup-gpu`). vLLM samples a bf16
    copy of the fp32 policy: its data is slightly off-policy, so runs are tagged `sampler` and `harness report`
    will not compare arms sampled by different backends unless told (`--mixed-samplers`)."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """Fraction of the GPU's memory vLLM may take (weights, activations, KV cache) beside the training run."""
    vllm_sleep: bool = False
    """Put vLLM to sleep between sampling calls (frees its memory for training; weights are pushed on waking)."""
    rollout_batch_size: int | None = Field(None, ge=1)
    """Sequences per sampler call for training data (rollouts, own samples); None: eval.batch_size."""
    seed: int = 0
    """Fine-tuning seed: data order, sampling, initial RNG state."""
    eval_every: int = Field(25, ge=1)
    """Evaluate (gain, drop, PLD, KL) every N optimizer steps and at the end."""
    threads: int | None = Field(1, ge=1)
    """CPU threads per run (None: torch's default). 1 is fastest for small models: measured 0.065 s/step
    with 1 thread vs 1.77 s/step with 2 on a busy 2-core machine; parallelise with `sweep --workers`."""
    device: str = "cpu"
    """Device of the policy."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How N launched processes (WORLD_SIZE > 1) split the training; one process ignores it. `ddp`: every rank holds
    the whole policy, AdamW state and gradients, summed by one all-reduce per step (fastest while they fit one GPU).
    `fsdp`: FSDP2 (`fully_shard` per decoder layer, then the root) keeps 1/N of the weights, gradients and AdamW
    state per rank, gathering each layer for its forward and backward; choose it when weights + gradients + AdamW
    state do not fit one GPU (the 7B preset). Rank 0 also holds an unsharded copy of the policy and of the base for
    evaluation, on its GPU only while it evaluates (harness/fsdp.py)."""


class EvalConfig(_Strict):
    """Evaluation settings."""

    batch_size: int = Field(512, ge=1)
    """Prompts per generation batch in evaluation (and, unless set separately, rollouts and scoring)."""
    score_batch_size: int | None = Field(None, ge=1)
    """Sequences per teacher-forced scoring pass without gradients: PLD, KL to base, the base's label NLLs,
    reference and π_old log-probs; None: eval.batch_size."""
    bootstrap_iters: int = Field(1000, ge=0)
    """Paired-bootstrap resamples for 95% CIs (0 disables CIs)."""
    examples_logged: int = Field(20, ge=0)
    """Per-task eval generations written to the run's sample artifact."""
    record_backend: Literal["none", "hf", "vllm"] = "none"
    """Evaluation of record (real worlds): the final checkpoint (and those at `record_steps`) scored by lm-eval's own
    backend in a fresh process, logged as `record/...` beside the in-run numbers; `none` skips it."""
    record_steps: list[int] = Field(default_factory=list)
    """Steps, besides the last, whose checkpoints get the evaluation of record."""
    record_model_args: dict[str, Any] = Field(default_factory=dict)
    """lm-eval model_args for the evaluation of record, over the harness's (e.g. `{max_model_len: 4096}`); vLLM's
    gpu_memory_utilization is otherwise sized from the GPU memory free beside the run."""
    record_timeout_s: int = Field(10800, ge=1)
    """Seconds the evaluation of record's process may run before it is killed (one-line error)."""


class TrackingConfig(_Strict):
    """Where and how runs are logged."""

    experiment: str = "harness"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name (None: <method>-<world>-<target>-s<seed>)."""


class RunConfig(_Strict):
    """One run: (world, method, hyper-parameters, seed); everything `harness.run.run` needs, the method's own
    settings included, so its JSON (`model_dump_json`) is the whole run (an isolated run's job file)."""

    method: str = "sft"
    """Registry key of the method (`harness list`)."""
    world: Any = Field(default_factory=lambda: world_class(DEFAULT_KIND).Config())
    """The world: `kind: toy` (default, the embedded world) or `kind: real` (a preset file under benchmarks/presets);
    validated as the `Config` of its kind's World (harness.world.WORLD_KINDS)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # The field keeps its name: MLflow params `method_args.<field>` are what reports and old runs read.
    method_args: SerializeAsAny[MethodConfig] = Field(default_factory=dict, validate_default=True)
    """The method's own hyper-parameters (given as `<method>.<field>=value`): an instance of the method's Config."""

    @field_validator("method_args", mode="plain")
    @classmethod
    def _method_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """Validate the settings against the Config of the method named in `method` (a lazy registry lookup)."""
        if "method" not in info.data:  # `method` itself failed validation: that error is the one reported
            return value
        config = get_method(info.data["method"]).Config
        if type(value) is config:
            return value
        return config.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)

    @field_validator("world", mode="before")
    @classmethod
    def _world(cls, value: Any) -> Any:
        return validate_world(value)

    @property
    def rollout_batch_size(self) -> int:
        """Sequences per sampler call for training data."""
        return self.train.rollout_batch_size or self.eval.batch_size

    @property
    def score_batch_size(self) -> int:
        """Sequences per no-gradient scoring pass (PLD, KL, reference and π_old log-probs)."""
        return self.eval.score_batch_size or self.eval.batch_size


def _fields_at(model: type[BaseModel], loc: tuple, data: dict) -> list[str]:
    """Field names of the (sub-)model reached by following `loc`; the world's are its kind's (read from `data`)."""
    for part in loc:
        if model is RunConfig and part == "world":
            ann = world_class(world_kind(data.get("world") or {})).Config
        else:
            f = model.model_fields.get(str(part))
            ann = f.annotation if f is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_validation(e: ValidationError, method: str, data: dict) -> HarnessError:
    """One HarnessError for a RunConfig's first error; the method's settings are named `<method>.<field>`."""
    # The run's own keys first, as when the method's settings were validated after the run config.
    err = sorted(e.errors(), key=lambda er: tuple(er["loc"][:1]) == ("method_args",))[0]
    loc, prefix, model = tuple(err["loc"]), "", RunConfig
    if loc[:1] == ("method_args",):
        loc, prefix, model = loc[1:], f"{method}.", get_method(method).Config
    key = prefix + ".".join(map(str, loc))
    if err["type"] == "extra_forbidden":
        parent = prefix + "".join(f"{p}." for p in loc[:-1])
        return unknown("config key", key, [parent + f for f in _fields_at(model, loc[:-1], data)])
    return HarnessError(f"config key {key!r}: {err['msg']} (got {err.get('input')!r})")


def resolve_config(world: str | None = None, method: str | None = None, preset: str | Path | None = None,
                   overrides: list[str] | dict | None = None) -> RunConfig:
    """Build and validate a RunConfig, the method's settings included, from all layers of settings."""
    from harness.method import METHODS

    layers: list[dict] = []
    if preset is not None:
        layers.append(load_yaml_mapping(preset, "preset file"))
    cli = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    layers.append(cli)
    if method is not None:
        layers.append({"method": method})
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    world_name = world or merged.get("world", {}).get("name", "toy")
    presets = world_presets()
    if world_name in presets:
        merged = deep_merge(deep_merge(presets[world_name], {"world": {"name": world_name}}), merged)
    elif world is not None or world_kind(merged.get("world", {})) == DEFAULT_KIND:  # a preset file may define a world
        raise unknown("world", world_name, presets, "See `harness list`.")
    method_name = merged.get("method", "sft")
    get_method(method_name)  # an unknown method is reported before any other key
    # `<method>.<field>` sections: the selected method's is validated; other methods' are ignored so one
    # preset can carry settings for every method of a sweep.
    method_args = merged.pop(method_name, {}) or {}
    for name in METHODS.names():
        merged.pop(name, None)
    merged["method_args"] = method_args
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as e:
        raise _format_validation(e, method_name, merged) from None
    hot = getattr(cfg.method_args, "temperature", None)
    if cfg.train.sampler == "vllm" and isinstance(hot, (int, float)) and hot > VLLM_MAX_TEMPERATURE:
        raise HarnessError(f"{method_name}.temperature={hot:g} is above what vLLM samples at "
                           f"({VLLM_MAX_TEMPERATURE:g}: SamplingParams raises); lower it or use train.sampler=hf")
    world_class(cfg.world.kind).check_config(cfg.world)
    return cfg


def world_presets(kind: str | None = None) -> dict[str, dict]:
    """Shipped world presets (of one kind, if given): name -> the run-config overrides of its YAML file."""
    out = {name: load_yaml_mapping(path, "world preset") for name, path in preset_files().items()}
    return {n: p for n, p in out.items() if kind is None or world_kind(p.get("world") or {}) == kind}
