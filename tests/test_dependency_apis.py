"""Version pins of the adapters over dependencies' private APIs (harness.mlflow_api, harness.lmeval_api), and the
public route that replaced Optuna's private ones (sweeps.study.trial_id, Heartbeat).

An upgrade past what an adapter was read against fails here first, by name: re-read the private names the adapter
lists in the new release, then widen its CHECKED range."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from packaging.version import Version

from harness import lmeval_api, mlflow_api


def _in_range(dist: str, checked: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[bool, str]:
    lo, hi = checked
    got = Version(version(dist)).release
    return lo <= got[:len(lo)] and got[:len(hi)] < hi, version(dist)


@pytest.mark.parametrize("dist, adapter", [("mlflow", mlflow_api), ("lm_eval", lmeval_api)])
def test_installed_version_is_one_the_adapter_was_read_against(dist, adapter):
    ok, got = _in_range(dist, adapter.CHECKED)
    assert ok, (f"{dist} {got} is outside {adapter.CHECKED}, the range {adapter.__name__} was checked against: "
                f"re-read the private names it uses, then widen CHECKED")


def test_the_range_check_can_fail():
    assert not _in_range("mlflow", ((0, 1), (0, 2)))[0]
    assert not _in_range("mlflow", ((99, 0), (100, 0)))[0]


# ---- MLflow -------------------------------------------------------------------------------------------------------

def test_schema_state_of_an_empty_and_of_a_created_store(tmp_path: Path):
    from mlflow import MlflowClient
    empty = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert mlflow_api.schema_state(empty) == (False, None)
    empty.dispose()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the client creates the tables and stamps the newest revision
    made = sqlalchemy.create_engine(uri)
    complete, current = mlflow_api.schema_state(made)
    made.dispose()
    assert complete and current == mlflow_api.latest_schema() and isinstance(current, str) and current


def test_bulk_metric_history_of_a_sql_store_and_of_something_else(tmp_path: Path):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e")
    run = client.create_run(exp).info.run_id
    for step, v in enumerate([1.0, 2.5]):
        client.log_metric(run, "target_gain", v, step=step)
    bulk = mlflow_api.bulk_metric_history(client)
    assert bulk is not None
    assert [(m.step, m.value) for m in bulk([run], "target_gain", max_results=10)] == [(0, 1.0), (1, 2.5)]
    assert mlflow_api.bulk_metric_history(object()) is None  # e.g. a client of a tracking server: per-run calls


def test_global_tracking_uri_is_put_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test: set_tracking_uri writes it
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_api.global_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri
    assert tracking_utils._tracking_uri is None  # unset again, not the resolved default


# ---- lm-eval ------------------------------------------------------------------------------------------------------

def test_load_yaml_merges_includes_and_leaves_functions_unresolved(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("output_type: generate_until\nnum_fewshot: 3\n")
    (tmp_path / "t.yaml").write_text("include: base.yaml\ntask: my_task\nnum_fewshot: 0\n"
                                     "process_results: !function utils.process\n")
    cfg = lmeval_api.load_yaml(tmp_path / "t.yaml")
    assert cfg["output_type"] == "generate_until" and cfg["num_fewshot"] == 0 and cfg["task"] == "my_task"
    assert isinstance(cfg["process_results"], str) and "process" in cfg["process_results"]  # not imported
    assert lmeval_api.load_yaml(tmp_path / "t.yaml", recursive=False)["include"] == "base.yaml"
    assert "output_type" not in lmeval_api.load_yaml(tmp_path / "t.yaml", recursive=False)


def test_index_entries_and_their_kinds(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("task: my_a\ntag: my_tag\noutput_type: generate_until\n")
    (tmp_path / "b.yaml").write_text("task: my_b\noutput_type: generate_until\n")
    (tmp_path / "g.yaml").write_text("group: my_group\ntask: [my_a, my_b]\n")
    one = lmeval_api.index_config(lmeval_api.load_yaml(tmp_path / "a.yaml"), tmp_path / "a.yaml")
    assert lmeval_api.kind(one["my_a"]) == "task" and Path(one["my_a"].yaml_path) == tmp_path / "a.yaml"
    assert lmeval_api.kind(one["my_tag"]) == "tag" and set(one["my_tag"].tags) == {"my_a"}
    index = lmeval_api.index_folders([tmp_path])
    assert {n: lmeval_api.kind(e) for n, e in index.items()} == {"my_a": "task", "my_b": "task", "my_tag": "tag",
                                                                 "my_group": "group"}
    assert index["my_group"].cfg["task"] == ["my_a", "my_b"]


def test_request_bars_off_disables_and_restores_lm_evals_bar():
    import lm_eval.api.task as task_mod
    orig = task_mod.tqdm
    with lmeval_api.request_bars_off():
        assert task_mod.tqdm is not orig
        assert task_mod.tqdm(range(3)).disable
    assert task_mod.tqdm is orig


# ---- Optuna: public calls only ------------------------------------------------------------------------------------

def test_trial_id_through_the_storage_is_the_trials_own(tmp_path: Path):
    from sweeps.study import Heartbeat, open_storage, trial_id
    storage = open_storage(str(tmp_path / "optuna.log"))
    study = optuna.create_study(study_name="s", storage=storage)
    optuna.create_study(study_name="other", storage=storage).ask()  # ids are storage-wide, numbers per study
    study.enqueue_trial({"x": 1.0})
    first, second = study.ask(), study.ask()
    for t in (first, second):
        assert trial_id(storage, study, t) == t._trial_id  # the private attribute it replaces
    assert "fixed_params" in storage.get_trial_system_attrs(trial_id(storage, study, first))
    assert "fixed_params" not in storage.get_trial_system_attrs(trial_id(storage, study, second))
    beat = Heartbeat(storage, trial_id(storage, study, first))
    waits = iter([False, True])  # one beat, then stop: no clock involved
    beat.stop = type("OneBeat", (), {"wait": lambda self, s: next(waits)})()
    beat._beat()
    assert isinstance(study.get_trials()[0].user_attrs["heartbeat"], float)
    assert "heartbeat" not in study.get_trials()[1].user_attrs
