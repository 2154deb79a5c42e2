"""Sweep specs (YAML): world, methods, search spaces, trials, seeds, storage, objective, sampler."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from harness.settings_input import deep_merge, load_yaml_mapping, parse_overrides
from harness.errors import HarnessError, unknown
from sweeps.steps_rule import StepsRule

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")


class Space(BaseModel):
    """One search dimension: a float range or a list of choices."""

    model_config = ConfigDict(extra="forbid")
    low: float | None = None
    high: float | None = None
    log: bool = True
    choices: list[Any] | None = None


class Variant(BaseModel):
    """An extra arm of a sweep: a registered method run with other settings (e.g. another teacher style)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    method: str
    """The registered method this arm trains."""
    seeds: list[int] | None = None
    """Seeds of this arm (None: the spec's seeds)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Run settings merged over the spec's `overrides`."""
    trials: int | None = Field(None, ge=1)
    """Trials of this arm (None: the spec's `trials`); with `space: {<arm>: ...}` an arm can train one stated rate."""


class SweepSpec(BaseModel):
    """What a sweep runs; every field can be overridden on the command line as `key=value`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = "default"
    """Sweep name: the MLflow experiment and the prefix of each method's Optuna study."""
    world: str = "toy"
    """World preset."""
    methods: list[str] | Literal["all"] = "all"
    """Methods to sweep, or `all`."""
    trials: int = Field(3, ge=1)
    """Trials per method (each trial = one hyper-parameter setting, run for every seed)."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    """Fine-tuning seeds run by every trial; the trial's objective is their mean."""
    storage: str | None = None
    """Optuna storage URL; None = a journal file `optuna-<name>.log` in the working directory."""
    objective: Literal["pareto", "gain_at_drop_budget", "drop_at_gain_target"] = "pareto"
    """pareto: maximise target_gain, minimise nontarget_drop; or one value under a budget."""
    budget: float = 5.0
    """The drop budget or gain target (points) of the single-objective modes."""
    sampler: Literal["tpe", "random", "grid"] = "grid"
    """grid: the papers' style -- `trials` log-spaced learning rates over each method's declared range."""
    sampler_seed: int = 0
    """Seed of the TPE/random sampler."""
    params: list[str] = Field(default_factory=lambda: ["train.lr"])
    """Which declared hyper-parameters to search (keys of the methods' sweep spaces)."""
    space: dict[str, dict[str, Space]] = Field(default_factory=dict)
    """Per-method overrides of declared spaces: {method: {param: {low, high, log}}}."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Run-config settings shared by every trial (e.g. {train: {max_steps: 100}})."""
    variants: dict[str, Variant] = Field(default_factory=dict)
    """Extra arms, {name: {method, seeds, overrides}}; `methods: all` includes them, or name them in `methods`."""
    isolate: bool = False
    """Run every (trial, seed) in a process of its own, so a CUDA error or a hung collective fails that run's
    trial, not the worker (GPU sweeps); results are read back from MLflow."""
    processes_per_run: int = Field(1, ge=1)
    """Processes per run: > 1 launches each run with `accelerate launch --num_processes N` (multi-GPU DDP) and
    implies `isolate`."""
    devices: list[int] | None = None
    """GPU ids this machine's workers share out: worker i owns an equal slice (its CUDA_VISIBLE_DEVICES); None:
    every worker sees every device."""
    run_timeout_h: float | None = Field(None, gt=0)
    """Kill an isolated run after this many hours (a hung collective): its trial fails, the sweep goes on."""
    steps_rule: StepsRule | None = None
    """One step budget for every arm, chosen per world on calibration seeds before any reported run
    (sweeps/steps_rule.py); None: the world preset's max_steps."""

    @field_validator("methods", "seeds", "params")
    @classmethod
    def _listed_once(cls, v: Any, info: ValidationInfo) -> Any:
        """A list names each entry once; methods and seeds list at least one (`methods: []` would sweep nothing)."""
        if isinstance(v, list):
            if not v and info.field_name != "params":
                raise ValueError("is empty; list at least one")
            twice = sorted({str(x) for x in v if v.count(x) > 1})
            if twice:
                raise ValueError(f"lists {twice[0]!r} twice; give each once")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_non_negative(cls, v: list[int]) -> list[int]:
        """Seeds are integers >= 0 (torch and numpy reject negative seeds mid-run)."""
        if any(s < 0 for s in v):
            raise ValueError(f"takes integers >= 0, got {min(v)}")
        return v

    @field_validator("budget")
    @classmethod
    def _finite_budget(cls, v: float) -> float:
        """The objective's budget is a finite number of points."""
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number of points")
        return v

    @property
    def isolated(self) -> bool:
        """Whether runs go to processes of their own."""
        return self.isolate or self.processes_per_run > 1


def load_spec(path: str | Path | None = None, cli: list[str] | None = None, **fields: Any) -> SweepSpec:
    """Spec from YAML (default: sweeps/default.yaml) < key=value strings < explicit fields."""
    path = Path(path) if path else DEFAULT_SPEC
    data = load_yaml_mapping(path, "sweep spec", "; see sweeps/default.yaml for the format")
    data = deep_merge(data, parse_overrides(cli or []))
    data = deep_merge(data, {k: v for k, v in fields.items() if v is not None})
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        if err["type"] == "extra_forbidden":
            top = str(err["loc"][0])
            cli_keys = {item.split("=", 1)[0].split(".")[0] for item in cli or []} | set(fields)
            where = "the command line" if top in cli_keys else str(path)
            raise unknown("sweep spec field", key, SweepSpec.model_fields, f"Fix {where}.") from None
        raise HarnessError(f"sweep spec field {key!r}: {err['msg']} (got {err.get('input')!r})") from None
    return spec


def resolve_methods(spec: SweepSpec) -> list[str]:
    """The spec's arms (method names and variant names), validated against the registry."""
    from harness.method import get_method, method_names
    for name, v in spec.variants.items():
        if name in method_names():
            raise HarnessError(f"sweep variant {name!r} has a method's name; rename it (e.g. {name}@style)")
        get_method(v.method)
    if spec.methods == "all":
        return method_names() + list(spec.variants)
    for m in spec.methods:
        if m not in spec.variants and m not in method_names():
            raise unknown("method or sweep variant", m, method_names() + list(spec.variants),
                          "`harness list` shows the methods.")
    return list(spec.methods)


def arm_method(spec: SweepSpec, arm: str) -> str:
    """The registered method an arm trains."""
    return spec.variants[arm].method if arm in spec.variants else arm


def arm_seeds(spec: SweepSpec, arm: str) -> list[int]:
    """The seeds an arm runs."""
    v = spec.variants.get(arm)
    return list(v.seeds) if v is not None and v.seeds is not None else list(spec.seeds)


def arm_trials(spec: SweepSpec, arm: str) -> int:
    """The trials (hyper-parameter settings) an arm runs."""
    v = spec.variants.get(arm)
    return v.trials if v is not None and v.trials is not None else spec.trials


def arm_overrides(spec: SweepSpec, arm: str) -> dict[str, Any]:
    """Run settings of an arm: the spec's overrides, then the variant's."""
    v = spec.variants.get(arm)
    return deep_merge(spec.overrides, v.overrides) if v is not None else dict(spec.overrides)


def worker_order(spec: SweepSpec, arms: list[str], i: int, workers: int) -> list[str]:
    """The order in which worker i of `workers` drains the arms' studies.

    Worker i starts i/N of the way round the methods, so workers meet on an arm only at the end and an arm's phase
    reused across its learning rates (TMS's teacher, harness.phase_cache) is mostly computed once; the spec's
    variants (the dial's SFT arms, cheap) come last for every worker, so the sweep ends on short trials rather
    than one worker finishing a long one alone.
    """
    plain = [a for a in arms if a not in spec.variants]
    k = i * len(plain) // workers
    return plain[k:] + plain[:k] + [a for a in arms if a in spec.variants]
