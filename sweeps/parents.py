"""A sweep's MLflow parent runs, one per arm: found or created, described (MLflow's notes), and finished with the
arm's Pareto set."""
from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import TrialState

from harness import metric_names as N
from harness.config import resolve_config
from sweeps.describe import log_progress
from sweeps.spec import SweepSpec, arm_method, arm_overrides
from sweeps.study import search_space, storage_url


def ensure_parent(spec: SweepSpec, arm: str, experiment_id: str) -> str:
    """The (sweep, arm) parent MLflow run, created once and reopened when a sweep resumes."""
    from harness.store import init_store
    client = init_store()
    found = client.search_runs([experiment_id], f"tags.kind = 'parent' and tags.sweep = '{spec.name}' "
                                                f"and tags.arm = '{arm}'", max_results=1)
    owner = {"pid": str(os.getpid()), "host": socket.gethostname()}  # lets mark_stale_runs close it after a crash
    if found:
        rid = found[0].info.run_id
        client.update_run(rid, status="RUNNING")
        for k, v in owner.items():
            client.set_tag(rid, k, v)
    else:
        rid = client.create_run(experiment_id, run_name=f"{spec.name}-{arm}",
                                tags={"kind": "parent", "sweep": spec.name, "method": arm_method(spec, arm),
                                      "arm": arm, **owner, "study": f"{spec.name}-{arm}",
                                      "world": spec.world}).info.run_id
    client.log_dict(rid, spec.model_dump(mode="json"), "spec.json")
    return rid


def describe(spec: SweepSpec, arms: list[str], experiment_id: str, parents: dict[str, str],
             spec_path: str | None, workers: int, fronts: dict[str, list[dict]] | None = None) -> None:
    """Write the Markdown descriptions (MLflow's notes) of the sweep's experiment and of every parent run."""
    from harness.store import KIND_TAG, KIND_TRAINING, NOTE_TAG, init_store
    from sweeps.describe import experiment_note, parent_note, reproduce_command

    client = init_store()
    cfgs = {a: resolve_config(world=spec.world, method=arm_method(spec, a), overrides=arm_overrides(spec, a))
            for a in arms}
    # An experiment made before the harness tagged its kind still opens on MLflow's model-training view.
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND_TRAINING)
    client.set_experiment_tag(experiment_id, NOTE_TAG, experiment_note(
        spec, arms, cfgs, experiment_id, parents, reproduce_command(spec, spec_path, workers), storage_url(spec)))
    for a in arms:
        note = parent_note(spec, a, cfgs[a], search_space(spec, a), experiment_id, parents[a],
                           reproduce_command(spec, spec_path, workers, arm=a), (fronts or {}).get(a))
        client.set_tag(parents[a], NOTE_TAG, note)


def finish_parent(spec: SweepSpec, study: optuna.Study, parent_id: str) -> list[dict]:
    """Record the method's Pareto set (or best trial) on its parent run and end it FINISHED."""
    from harness.store import init_store
    client = init_store()
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trials if done else []
    # The set is chosen on validation (the objective); its eval values are what a report may quote.
    front = [{"trial": t.number, "params": t.params,
              **{k: t.user_attrs.get(k) for k in (N.TRIAL_VAL_TARGET_GAIN, N.TRIAL_VAL_NONTARGET_DROP, N.TARGET_GAIN,
                                                  N.NONTARGET_DROP)},
              "runs": t.user_attrs.get("mlflow_run_ids")} for t in best]
    client.log_dict(parent_id, front, "pareto.json")
    client.set_tag(parent_id, "pareto_trials", ",".join(str(f["trial"]) for f in front))
    log_progress(study, parent_id)
    client.set_terminated(parent_id, "FINISHED" if done else "FAILED")
    return front
