"""The step-budget rule: one budget for every method of a sweep, chosen per world before any reported run.

A fixed step budget does not travel across targets: on some toy targets SFT is still inside its format dip after
100 steps on some seeds, so no matched gain exists and the core comparison cannot be tested. The rule, decided on
data that is never reported:

    for B in `candidates` (ascending): train the `anchor` method at the top of its learning-rate range for B
    steps on each calibration seed (`seeds`, disjoint from the sweep's); the budget is the first B at which every
    calibration run ends with a validation target gain above `min_gain`; if none does, the largest candidate.

Every arm of the sweep then trains `budget` optimizer steps (the budget rule: all methods the same number), with
`train.eval_every` = budget / `eval_points` so each run has the same number of evaluation points at any budget.
A budget set in the spec's `overrides.train.max_steps` wins over the rule. The decision is kept as a tag of the sweep's MLflow experiment (`steps_rule`), so a resumed sweep, or a worker on
another machine, trains the same budget without recalibrating; the calibration runs are logged to the experiment
`<sweep>-steps-rule`, outside the report's. It is also cached in the world's cache folder, keyed by the rule, the
world, the overrides and the harness's code, so a new sweep of the same world on this machine reuses it.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from harness import metric_names as N
from harness.settings_input import deep_merge


class StepsRule(BaseModel):
    """The step-budget rule's settings (sweep spec field `steps_rule`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    candidates: list[int] = Field(default_factory=lambda: [100, 200, 400], min_length=1)
    """Step budgets tried in ascending order."""
    anchor: str = "sft"
    """The method that must gain: the slowest learner of the core comparison (off-policy labels)."""
    seeds: list[int] = Field(default_factory=lambda: [100, 101, 102], min_length=1)
    """Calibration fine-tuning seeds: never the sweep's (a spec using one of them is refused)."""
    min_gain: float = 0.0
    """Validation target gain (points) every calibration run must end above."""
    eval_points: int = Field(4, ge=1)
    """Evaluations per run at any budget: train.eval_every = budget / eval_points."""


def budget_overrides(budget: int, eval_points: int) -> dict[str, Any]:
    """Run settings that give every arm `budget` steps and `eval_points` evaluations."""
    return {"train": {"max_steps": budget, "eval_every": max(1, budget // eval_points)}}


def choose_budget(rule: StepsRule, final_gain: Callable[[int, int], float],
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply the rule; `final_gain(budget, seed)` trains one calibration run and returns its final validation gain."""
    tried: list[dict[str, Any]] = []
    for budget in sorted(rule.candidates):
        gains = {}
        for seed in rule.seeds:
            gains[seed] = final_gain(budget, seed)
            log(f"steps rule: {rule.anchor} at {budget} steps, calibration seed {seed}: validation gain "
                f"{gains[seed]:+.1f}")
            if gains[seed] <= rule.min_gain:
                break  # this budget already fails; the remaining seeds need not run
        tried.append({"budget": budget, "gains": gains})
        if len(gains) == len(rule.seeds) and all(g > rule.min_gain for g in gains.values()):
            return {"budget": budget, "met": True, "tried": tried}
    return {"budget": max(rule.candidates), "met": False, "tried": tried}


def resolve_budget(spec, exp_id: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The sweep's budget under its rule (None without one): the experiment's recorded decision, else calibrate."""
    from mlflow.tracking import MlflowClient

    from harness.config import resolve_config
    from harness.errors import HarnessError
    from harness.run import run
    from sweeps.spec import arm_seeds, resolve_methods
    from sweeps.study import search_space

    rule: StepsRule | None = spec.steps_rule
    if rule is None:
        return None
    if "max_steps" in spec.overrides.get("train", {}):  # the user fixed the budget: that wins
        log(f"steps rule skipped: overrides.train.max_steps = {spec.overrides['train']['max_steps']} fixes the budget")
        return None
    clash = sorted(set(rule.seeds) & {s for arm in resolve_methods(spec) for s in arm_seeds(spec, arm)})
    if clash:
        raise HarnessError(f"steps_rule.seeds {clash} are also sweep seeds; calibration seeds must never be "
                           "reported: pick others (default 100, 101, 102)")
    key = {"rule": rule.model_dump(), "world": spec.world, "overrides": spec.overrides}
    client = MlflowClient()
    recorded = client.get_experiment(exp_id).tags.get("steps_rule")
    if recorded:
        decision = json.loads(recorded)
        if decision.get("key") == json.loads(json.dumps(key)):
            log(f"steps rule: {decision['budget']} steps (recorded for this sweep)")
            return decision
        raise HarnessError(f"sweep {spec.name!r} already chose its step budget under another steps_rule or world; "
                           "restore the spec, or give the sweep a new name")
    top = search_space(spec, rule.anchor).get("train.lr") if "train.lr" in spec.params else None
    lr = top.high if top is not None else None

    def final_gain(budget: int, seed: int) -> float:
        over = deep_merge(spec.overrides, budget_overrides(budget, rule.eval_points))
        over = deep_merge(over, {"train": {"seed": seed, **({"lr": lr} if lr else {})},
                                 "tracking": {"experiment": f"{spec.name}-steps-rule",
                                              "run_name": f"{rule.anchor}-{budget}steps-seed{seed}"}})
        cfg = resolve_config(world=spec.world, method=rule.anchor, overrides=over)
        return float(run(cfg, progress=False)[N.VAL_TARGET_GAIN])

    decision = _calibrated(spec, lr, lambda: choose_budget(rule, final_gain, log), log) | {"key": key, "anchor_lr": lr}
    runs = client.search_runs([exp_id], "tags.kind = 'run'", max_results=50000)
    trained = {int(float(r.data.params["train.max_steps"])) for r in runs if "train.max_steps" in r.data.params}
    if trained - {decision["budget"]}:  # runs of an earlier spec: resuming would mix budgets in one experiment
        raise HarnessError(f"sweep {spec.name!r} already has runs of {sorted(trained)} steps, but its steps_rule "
                           f"chose {decision['budget']}; give the sweep a new name")
    verdict = "met" if decision["met"] else "NOT met by any candidate (claims on this world may be 'not tested')"
    log(f"steps rule: every arm trains {decision['budget']} steps ({verdict})")
    client.set_experiment_tag(exp_id, "steps_rule", json.dumps(decision))
    return decision


def _calibrated(spec, lr: float | None, calibrate: Callable[[], dict[str, Any]],
                log: Callable[[str], None]) -> dict[str, Any]:
    """The rule's decision for this world: from the world's cache folder (next to its base) if this machine has
    calibrated the same rule, world, overrides and code before, else `calibrate()` (and stored there).

    The calibration is as deterministic as the base it starts from, so a new sweep of the same world (a fresh MLflow
    store, another spec name) need not rerun its three runs; the key includes the harness's code
    (harness.phase_cache), so any change to it calibrates afresh.
    """
    from harness.config import resolve_config
    from harness.phase_cache import phase_key
    from harness.world import build_world

    cfg = resolve_config(world=spec.world, method=spec.steps_rule.anchor, overrides=spec.overrides)
    key = phase_key({"rule": spec.steps_rule.model_dump(), "world": spec.world, "overrides": spec.overrides,
                     "anchor_lr": lr})
    path = build_world(cfg.world).cache_dir / "steps-rule" / f"{key}.json"
    if path.exists():
        decision = json.loads(path.read_text())
        log(f"steps rule: {decision['budget']} steps (calibrated earlier on this machine, {path})")
        return decision
    decision = calibrate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(decision))
    path.with_suffix(".tmp").replace(path)
    return decision


def apply_budget(spec, decision: dict[str, Any] | None):
    """The spec with the chosen budget merged into its shared overrides (unchanged without a rule)."""
    if decision is None:
        return spec
    over = deep_merge(spec.overrides, budget_overrides(decision["budget"], spec.steps_rule.eval_points))
    return spec.model_copy(update={"overrides": over})
