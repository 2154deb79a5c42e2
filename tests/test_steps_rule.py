"""The step-budget rule (sweeps/steps_rule.py): its decision on hand-made gains, and a sweep that applies it."""
from __future__ import annotations

import json

import mlflow
import pytest

from harness.errors import HarnessError
from sweeps.driver import run_sweep
from sweeps.spec import load_spec
from sweeps.steps_rule import StepsRule, apply_budget, budget_overrides, choose_budget

FAST = ["world=micro", "seeds=[0]", "overrides={train: {eval_every: 4}}"]


def _gains(table: dict[tuple[int, int], float]):
    calls = []

    def final_gain(budget: int, seed: int) -> float:
        calls.append((budget, seed))
        return table[budget, seed]
    return final_gain, calls


def test_first_budget_at_which_every_calibration_seed_gains():
    rule = StepsRule(candidates=[200, 100, 400], seeds=[7, 8])
    gain, calls = _gains({(100, 7): 5.0, (100, 8): -3.0, (200, 7): 2.5, (200, 8): 0.5})
    decision = choose_budget(rule, gain, log=lambda _: None)
    assert decision["budget"] == 200 and decision["met"]
    assert calls == [(100, 7), (100, 8), (200, 7), (200, 8)]  # ascending; 400 never runs
    assert decision["tried"] == [{"budget": 100, "gains": {7: 5.0, 8: -3.0}}, {"budget": 200, "gains": {7: 2.5, 8: 0.5}}]


def test_a_failing_seed_skips_the_rest_of_its_budget_and_none_met_takes_the_largest():
    rule = StepsRule(candidates=[100, 200], seeds=[7, 8], min_gain=1.0)
    gain, calls = _gains({(100, 7): 1.0, (200, 7): 4.0, (200, 8): 0.9})
    decision = choose_budget(rule, gain, log=lambda _: None)
    assert calls == [(100, 7), (200, 7), (200, 8)]  # gain 1.0 is not above min_gain 1.0: seed 8 skipped at 100
    assert decision["budget"] == 200 and not decision["met"]


def test_budget_keeps_the_number_of_evaluation_points():
    assert budget_overrides(200, 4) == {"train": {"max_steps": 200, "eval_every": 50}}
    assert budget_overrides(6, 4) == {"train": {"max_steps": 6, "eval_every": 1}}
    spec = load_spec(None, FAST + ["steps_rule={candidates: [8]}"])
    assert apply_budget(spec, None) is spec
    assert apply_budget(spec, {"budget": 8}).overrides["train"] == {"eval_every": 2, "max_steps": 8}


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, micro_world):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_a_sweep_calibrates_once_trains_every_arm_the_chosen_budget_and_reuses_it(sweep_dir, capsys):
    rule = "steps_rule={candidates: [4, 8], seeds: [100], min_gain: -1000}"
    spec = load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=sr", rule], methods=["sft", "grpo"])
    run_sweep(spec, progress=False)
    out = capsys.readouterr().out
    assert "steps rule: sft at 4 steps, calibration seed 100" in out and "every arm trains 4 steps (met)" in out
    kids = mlflow.search_runs(experiment_names=["sr"], filter_string="tags.kind = 'run'")
    assert len(kids) == 2 and set(kids["metrics.steps"]) == {4.0}
    calib = mlflow.search_runs(experiment_names=["sr-steps-rule"], filter_string="tags.kind = 'run'")
    assert calib["tags.mlflow.runName"].tolist() == ["sft-4steps-seed100"]
    assert float(calib["params.train.lr"].iloc[0]) == 1e-3  # the top of SFT's declared range
    tag = json.loads(mlflow.get_experiment_by_name("sr").tags["steps_rule"])
    assert tag["budget"] == 4 and tag["met"]
    run_sweep(spec, progress=False)  # resumed: the recorded decision, no new calibration run
    assert "4 steps (recorded for this sweep)" in capsys.readouterr().out
    assert len(mlflow.search_runs(experiment_names=["sr-steps-rule"], filter_string="tags.kind = 'run'")) == 1
    other = load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=sr",
                             "steps_rule={candidates: [8], seeds: [100]}"], methods=["sft"])
    with pytest.raises(HarnessError, match="already chose its step budget"):
        run_sweep(other, progress=False)
    # a new sweep of the same world and rule (a fresh experiment) takes the decision this machine cached
    again = load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=sr2", rule], methods=["sft"])
    run_sweep(again, progress=False)
    assert "steps rule: 4 steps (calibrated earlier on this machine" in capsys.readouterr().out
    assert mlflow.get_experiment_by_name("sr2-steps-rule") is None
    assert json.loads(mlflow.get_experiment_by_name("sr2").tags["steps_rule"])["budget"] == 4


def test_calibration_seeds_must_not_be_reported_and_a_fixed_max_steps_wins(sweep_dir, capsys):
    clash = load_spec(None, ["world=micro", "seeds=[0, 100]", "name=c1", "steps_rule={seeds: [100]}"],
                      methods=["sft"])
    with pytest.raises(HarnessError, match=r"steps_rule.seeds \[100\] are also sweep seeds"):
        run_sweep(clash, progress=False)
    fixed = load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=c2", "steps_rule={}",
                             "overrides={train: {max_steps: 2, eval_every: 2}}"], methods=["sft"])
    run_sweep(fixed, progress=False)
    assert "steps rule skipped: overrides.train.max_steps = 2 fixes the budget" in capsys.readouterr().out
    assert mlflow.get_experiment_by_name("c2-steps-rule") is None


def test_runs_of_another_budget_in_the_experiment_are_refused(sweep_dir):
    run_sweep(load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=old", "steps_rule=null"], methods=["sft"]),
              progress=False)
    ruled = load_spec(None, ["world=micro", "seeds=[0]", "trials=1", "name=old",
                             "steps_rule={candidates: [4], seeds: [100], min_gain: -1000}"], methods=["sft"])
    with pytest.raises(HarnessError, match=r"already has runs of \[8\] steps, but its steps_rule chose 4"):
        run_sweep(ruled, progress=False)


def test_workers_start_apart_and_all_end_on_the_variants():
    from types import SimpleNamespace

    from sweeps.spec import worker_order
    spec = SimpleNamespace(variants={"sft@mild": None, "sft@own": None})
    arms = ["a", "b", "c", "d", "e", "sft@mild", "sft@own"]
    assert worker_order(spec, arms, 0, 2) == ["a", "b", "c", "d", "e", "sft@mild", "sft@own"]
    assert worker_order(spec, arms, 1, 2) == ["c", "d", "e", "a", "b", "sft@mild", "sft@own"]
    assert worker_order(spec, arms, 0, 1) == arms
