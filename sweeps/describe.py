"""Markdown descriptions of a sweep's MLflow experiment and parent runs, and the command that reproduces it.

MLflow shows the `mlflow.note.content` tag of an experiment or run as its description; these say what
the sweep is (world, target, arms, trials, seeds, objective), how to re-run or resume it, and where the
report's files are (logged under `report/` on every parent run by `harness report`).
"""
from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from harness import metric_names as N
from harness.ui import WORKFLOW_TYPE
from sweeps.spec import SweepSpec, arm_method, arm_seeds, arm_trials, load_spec

log = logging.getLogger(__name__)

# the order in which a reproducing command names the fields it needs
_FIELD_ORDER = ["name", "world", "methods", "trials", "seeds", "objective", "budget", "sampler", "sampler_seed",
                "params", "space", "overrides", "variants", "storage"]


def _flow(value: Any) -> str:
    """A value as one-line YAML, the way `key=value` reads it back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 6, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every non-mapping value of a nested mapping."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def reproduce_command(spec: SweepSpec, spec_path: str | None = None, workers: int = 1,
                      arm: str | None = None) -> str:
    """`harness sweep ...` that rebuilds exactly `spec` (only one arm's study with `arm`)."""
    from harness.store import redact

    base = load_spec(spec_path).model_dump(mode="json")
    want = spec.model_dump(mode="json")
    if arm is not None:
        want["methods"] = [arm]
    words = ["harness", "sweep"]
    if spec_path:
        words += ["--spec", str(spec_path)]
    for key in _FIELD_ORDER + [k for k in want if k not in _FIELD_ORDER]:
        if want.get(key) != base.get(key):
            value = want[key]
            if key == "overrides" and not base.get(key):
                # run settings read as they do for `harness run`: train.max_steps=2, not overrides={train: ...}
                words += [f"{k}={_flow(v)}" for k, v in _leaves(value)]
                continue
            if key == "methods" and isinstance(value, list):
                text = ",".join(value)
            elif key == "seeds":
                text = ",".join(map(str, value))
            elif key == "storage" and value:
                text = redact(value)
            else:
                text = _flow(value)
            words.append(f"{key}={text}")
    if workers > 1:
        words.append(f"--workers {workers}")
    cmd = " ".join(w if w.startswith("--workers") else shlex.quote(w) for w in words)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return f"MLFLOW_TRACKING_URI={shlex.quote(redact(uri))} {cmd}" if uri else cmd


# MLflow's UI shows GenAI pages unless the address asks for its model-training view (see harness/ui.py).
_VIEW = f"?workflowType={WORKFLOW_TYPE}"


def report_link(experiment_id: str, parent_id: str) -> str:
    """The MLflow UI address (relative to the UI's root) of a parent run's report page."""
    return f"#/experiments/{experiment_id}/runs/{parent_id}/artifacts/report/report.html{_VIEW}"


def _space_text(space: dict) -> str:
    parts = []
    for k, sp in space.items():
        if sp.choices is not None:
            parts.append(f"`{k}` ∈ {{{', '.join(map(str, sp.choices))}}}")
        else:
            parts.append(f"`{k}` ∈ [{sp.low:g}, {sp.high:g}]{' (log)' if sp.log else ''}")
    return ", ".join(parts)


def _objective_text(spec: SweepSpec) -> str:
    if spec.objective == "pareto":
        return ("Pareto: maximise `target_gain`, minimise `nontarget_drop`, both on the validation prompts "
                "(Optuna's best trials are each arm's front; reported numbers are on the eval prompts)")
    if spec.objective == "gain_at_drop_budget":
        return (f"maximise `target_gain` with `nontarget_drop` ≤ {spec.budget:g} points (penalised above), on the "
                "validation prompts")
    return (f"minimise `nontarget_drop` with `target_gain` ≥ {spec.budget:g} points (penalised below), on the "
            "validation prompts")


def _world_text(cfg) -> str:
    return f"{cfg.world.summary()}; {cfg.train.max_steps} steps per run"


def _where_text() -> str:
    from harness.store import _sqlite_path, redact, tracking_uri
    uri = tracking_uri()
    db = _sqlite_path(uri)
    return f"`{db}`" if db is not None else f"`{redact(uri)}`"


def experiment_note(spec: SweepSpec, arms: list[str], cfgs: dict[str, Any], experiment_id: str,
                    parents: dict[str, str], command: str, storage: str) -> str:
    """The experiment's description: what the sweep is, how to reproduce it, where its report is."""
    from harness.store import redact
    first = cfgs[arms[0]]
    runs = sum(arm_trials(spec, a) * len(arm_seeds(spec, a)) for a in arms)
    rows = []
    for a in arms:
        cfg = cfgs[a]
        style = getattr(cfg.world, "teacher_style", "")
        style = "" if style == getattr(first.world, "teacher_style", "") else f", teacher style `{style}`"
        rows.append(f"| [`{a}`](#/experiments/{experiment_id}/runs/{parents[a]}{_VIEW}) | "
                    f"`{arm_method(spec, a)}`{style} | {', '.join(map(str, arm_seeds(spec, a)))} | "
                    f"[report]({report_link(experiment_id, parents[a])}) |")
    lines = [
        f"**Sweep `{spec.name}`**: how much each post-training method gains on the target task and forgets on the "
        f"others. World {_world_text(first)}.",
        "",
        f"{len(arms)} arms × {spec.trials} trials ({spec.sampler} over {', '.join(f'`{p}`' for p in spec.params)}) "
        f"× their seeds = {runs} runs. One parent run per arm; each (trial, seed) is a run nested under it. "
        f"Objective: {_objective_text(spec)}.",
        "",
        "| arm | method | seeds | report |",
        "|---|---|---|---|",
        *rows,
        "",
        f"**Reproduce or resume** (in `{Path.cwd()}`; runs that already finished are reused, nothing is "
        "trained twice):",
        "",
        f"    {command}",
        "",
        f"**Report**: `harness report --experiment {shlex.quote(spec.name)}` writes `reports/out/` and logs "
        "`report.html`, `summary.md`, every figure (PNG + PDF) and CSV table under `report/` on every parent run "
        "(the links above, once it has run).",
        "",
        f"Tracking store {_where_text()}; Optuna storage `{redact(storage)}` (studies `{spec.name}-<arm>`).",
    ]
    return "\n".join(lines)


def parent_note(spec: SweepSpec, arm: str, cfg: Any, space: dict, experiment_id: str, parent_id: str,
                command: str, front: list[dict] | None = None) -> str:
    """A parent run's description: the arm, its search space and seeds, its command, report and Pareto set."""
    from harness.method import get_method
    method = get_method(arm_method(spec, arm))
    seeds = arm_seeds(spec, arm)
    lines = [
        f"**Arm `{arm}`** of sweep `{spec.name}`: method `{method.name}` ({method.description}; {method.paper}).",
        "",
        f"World {_world_text(cfg)}.",
        "",
        f"{arm_trials(spec, arm)} trials ({spec.sampler}) over {_space_text(space)}; every trial runs seeds "
        f"{', '.join(map(str, seeds))} (one nested run each) and its objective is their mean. "
        f"Objective: {_objective_text(spec)}. The metric `trials/complete` counts the trials done.",
        "",
        "**Re-run or resume only this arm**:",
        "",
        f"    {command}",
        "",
        f"**Report**: [`report/report.html`]({report_link(experiment_id, parent_id)}) and the figures beside it, "
        f"after `harness report --experiment {shlex.quote(spec.name)}`.",
    ]
    if front:
        lines += ["", "**Pareto set** (mean over seeds):", "", "| trial | parameters | target gain | non-target drop |",
                  "|---|---|---|---|"]
        for f in front:
            params = ", ".join(f"`{k}`={v:.3g}" if isinstance(v, float) else f"`{k}`={v}"
                               for k, v in f["params"].items())
            gain, drop = f.get(N.TARGET_GAIN), f.get(N.NONTARGET_DROP)
            lines.append(f"| {f['trial']} | {params} | {gain:+.1f} | {drop:+.1f} |" if gain is not None and
                         drop is not None else f"| {f['trial']} | {params} | - | - |")
    return "\n".join(lines)


def log_progress(study: optuna.Study, parent_id: str) -> None:
    """Log on the arm's parent run how many trials are done, so MLflow's UI shows the sweep's progress."""
    from harness.store import init_store
    trials = study.get_trials(deepcopy=False)
    n = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING,
                                                        TrialState.RUNNING)}
    slots = n[TrialState.COMPLETE] + n[TrialState.WAITING] + n[TrialState.RUNNING]
    client = init_store()
    try:
        step = n[TrialState.COMPLETE] + n[TrialState.FAIL]
        client.log_metric(parent_id, "trials/complete", n[TrialState.COMPLETE], step=step)
        client.log_metric(parent_id, "trials/fail", n[TrialState.FAIL], step=step)
        client.set_tag(parent_id, "progress", f"{n[TrialState.COMPLETE]}/{slots} trials done"
                       + (f", {n[TrialState.FAIL]} failed" if n[TrialState.FAIL] else ""))
    except Exception as e:  # progress is a courtesy: a busy store must not fail the sweep
        log.warning("could not log progress on parent run %s: %s", parent_id, e)
