"""RunTracker and helpers against a throwaway sqlite store: statuses, round-trips, signals, stale runs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from harness import store as store_mod
from harness.errors import TrainingDiverged
from harness.store import ensure_experiment, find_run, mark_stale_runs, tracking_uri
from harness.tracking import RunTracker, flatten


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated empty DB (creating one costs ~2 s of alembic), copied into every test."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    store_mod.init_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def store(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store in tmp_path, selected through MLFLOW_TRACKING_URI; cwd moved there too."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # tmp_path is absolute: four slashes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # anything that still writes ./mlruns stays in the temp dir
    return uri


def _run(run_id: str):
    return MlflowClient().get_run(run_id)


def test_tracking_uri_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:////{str(tmp_path).lstrip('/')}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///sub/x.db")
    assert tracking_uri() == f"sqlite:///{tmp_path}/sub/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@h/db")
    assert tracking_uri() == "postgresql://u@h/db"


def test_flatten() -> None:
    cfg = {"train": {"lr": 1e-4, "steps": 3, "sched": {"kind": "cosine"}}, "tasks": ["add", "sub"],
           "extra": {}, "seed": None, "flag": True}
    assert flatten(cfg) == {"train.lr": "0.0001", "train.steps": "3", "train.sched.kind": "cosine",
                            "tasks": '["add", "sub"]', "extra": "{}", "seed": "None", "flag": "True"}
    assert flatten({"a": 1}, prefix="cfg") == {"cfg.a": "1"}


def test_roundtrip_params_metrics_tags_artifacts(store: str, tmp_path: Path) -> None:
    params = {f"p.{i:03d}": str(i) for i in range(150)}  # > 100: needs two batches
    params["long"] = "x" * 7000  # over MLflow's 6000-char limit
    with RunTracker("harness", run_name="sft-toy", params=params, tags={"method": "sft", "seed": 1}) as tr:
        for step in range(3):
            tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step=step)
        tr.log_metrics({f"m/{i}": float(i) for i in range(1200)}, step=0)  # > 1000: two batches
        tr.set_tags({"phase": "eval"})
        tr.log_dict({"a": {"b": [1, 2]}, "path": Path("/x")}, "config.json")
        tr.log_text("hello\n", "samples.txt")
        tr.log_table([{"prompt": "1+1", "ok": True}, {"prompt": "2+2", "ok": False}], "eval/examples.csv")
        tr.log_table(pd.DataFrame({"x": [1, 2]}), "eval/table.json")
        run_id = tr.run_id
    assert tr.status == "FINISHED"

    df = mlflow.search_runs(experiment_names=["harness"])
    row = df.set_index("run_id").loc[run_id]
    assert row["status"] == "FINISHED"
    assert row["params.p.149"] == "149" and row["params.p.000"] == "0"
    assert len(row["params.long"]) == 6000 and row["params.long"].endswith("[truncated from 7000 chars]")
    assert row["metrics.train/loss"] == pytest.approx(1 / 3) and row["metrics.m/1199"] == 1199.0
    assert row["tags.method"] == "sft" and row["tags.seed"] == "1" and row["tags.phase"] == "eval"
    assert row["tags.mlflow.runName"] == "sft-toy"
    assert row["tags.pid"] == str(os.getpid()) and row["tags.host"] == store_mod.HOST

    hist = MlflowClient().get_metric_history(run_id, "train/loss")
    steps = [(m.step, round(m.value, 4)) for m in sorted(hist, key=lambda m: m.step)]
    assert steps == [(0, 1.0), (1, 0.5), (2, 0.3333)]

    art = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl")))
    assert (art / "samples.txt").read_text() == "hello\n"
    assert '"/x"' in (art / "config.json").read_text()
    assert pd.read_csv(art / "eval" / "examples.csv")["prompt"].tolist() == ["1+1", "2+2"]
    assert (art / "eval" / "table.json").exists()
    # Artifacts live next to the DB, not in MLflow's cwd-relative ./mlruns default.
    assert _run(run_id).info.artifact_uri.startswith(str(tmp_path / "mlruns" / "harness"))


def test_exception_ends_failed_with_reason(store: str) -> None:
    with pytest.raises(TrainingDiverged):
        with RunTracker("harness", run_name="nan") as tr:
            tr.log_metrics({"train/loss": float("nan")}, step=3)
            raise TrainingDiverged("non-finite loss at step 3")
    run = _run(tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "non-finite loss at step 3"
    assert run.data.tags["error_type"] == "TrainingDiverged"
    assert [f.path for f in MlflowClient().list_artifacts(tr.run_id, "failure")] == ["failure/traceback.txt"]


def test_buffered_metrics_are_written_in_order_and_on_failure(store: str) -> None:
    with pytest.raises(RuntimeError):
        with RunTracker("harness", run_name="buffered") as tr:
            for step in (1, 2):
                tr.buffer_metrics({"train/loss": 1.0 / step}, step)
            assert MlflowClient().get_metric_history(tr.run_id, "train/loss") == []   # nothing written yet
            tr.log_metrics({"target_gain": 5.0}, step=2)                              # flushes the queue too
            tr.buffer_metrics({"train/loss": 0.25}, 3)
            raise RuntimeError("boom")
    hist = MlflowClient().get_metric_history(tr.run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(1, 1.0), (2, 0.5), (3, 0.25)]   # step 3 written at exit
    assert _run(tr.run_id).info.status == "FAILED"


def test_long_error_message_is_truncated(store: str) -> None:
    with pytest.raises(ValueError):
        with RunTracker("harness") as tr:
            raise ValueError("e" * 5000)
    reason = _run(tr.run_id).data.tags["failure_reason"]
    assert len(reason) <= 1000 and reason.endswith("[truncated from 5000 chars]")


def test_error_while_starting_still_ends_the_run(store: str) -> None:
    with pytest.raises(mlflow.exceptions.MlflowException, match="250"):
        with RunTracker("harness", run_name="bad-param", params={"k" * 300: 1}):
            pass
    df = mlflow.search_runs(experiment_names=["harness"], filter_string="tags.mlflow.runName = 'bad-param'")
    assert df["status"].tolist() == ["FAILED"] and "250" in df["tags.failure_reason"][0]


def test_fail_is_kept_after_normal_exit(store: str) -> None:
    with RunTracker("harness") as tr:
        tr.fail("non-finite loss at step 7", error_type="TrainingDiverged")
    run = _run(tr.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "non-finite loss at step 7"


def test_keyboard_interrupt_ends_killed(store: str) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with RunTracker("harness") as tr:
            raise KeyboardInterrupt
    run = _run(tr.run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted (Ctrl-C)"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_nested_child_has_parent_and_both_end(store: str) -> None:
    with RunTracker("sweep", run_name="sft") as parent:
        with RunTracker("sweep", run_name="trial-0", parent_run_id=parent.run_id) as child:
            pass
        with pytest.raises(RuntimeError), RunTracker("sweep", run_name="trial-1", parent_run_id=parent.run_id):
            raise RuntimeError("boom")
    kids = mlflow.search_runs(experiment_names=["sweep"], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert sorted(zip(kids["tags.mlflow.runName"], kids["status"])) == [("trial-0", "FINISHED"), ("trial-1", "FAILED")]
    assert _run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert _run(parent.run_id).info.status == "FINISHED"


def test_ensure_experiment_survives_create_race(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exp_id = ensure_experiment("race")
    assert ensure_experiment("race") == exp_id
    real = MlflowClient.get_experiment_by_name
    calls: list[str] = []

    def first_miss(self: MlflowClient, name: str):  # another process "creates it" between our read and create
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", first_miss)
    assert ensure_experiment("race") == exp_id and len(calls) == 2


def test_find_run_matches_finished_runs_by_tags(store: str) -> None:
    tags = {"kind": "base-eval", "ckpt": "abc123", "note": "it's"}
    with RunTracker("cache", tags=tags) as old:
        pass
    with RunTracker("cache", tags=tags) as new:
        pass
    with pytest.raises(RuntimeError), RunTracker("cache", tags=tags):
        raise RuntimeError("failed runs are not a cache hit")
    assert find_run("cache", tags) == new.run_id != old.run_id
    assert find_run("cache", {**tags, "ckpt": "other"}) is None
    assert find_run("no-such-experiment", tags) is None


_CHILD = textwrap.dedent("""
    import sys, time
    from harness.tracking import RunTracker
    with RunTracker("procs", run_name="child") as tr:
        print(tr.run_id, flush=True)
        while True:
            time.sleep(0.05)
""")


def _start_child(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """A subprocess holding a tracked run open; returns it and its run id once the run exists."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id, "child exited before starting its run"
    return proc, run_id


def test_sigterm_in_subprocess_ends_killed(store: str, tmp_path: Path) -> None:
    proc, run_id = _start_child(tmp_path)
    assert _run(run_id).info.status == "RUNNING"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    run = _run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "terminated (SIGTERM)"
    assert run.info.end_time is not None


def test_mark_stale_runs_kills_runs_of_dead_pids(store: str, tmp_path: Path) -> None:
    proc, dead_id = _start_child(tmp_path)
    proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    proc.wait(timeout=30)
    assert _run(dead_id).info.status == "RUNNING"
    with RunTracker("procs", run_name="alive") as alive:  # RUNNING, but our pid is alive: left alone
        exp_id = alive.experiment_id
        assert mark_stale_runs(exp_id) == [dead_id]
        assert _run(alive.run_id).info.status == "RUNNING"
    run = _run(dead_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == f"process died (pid {proc.pid})"
    assert mark_stale_runs(exp_id) == []


def test_signal_during_exit_is_held_until_run_has_ended(store: str) -> None:
    got: list[int] = []
    prev = signal.signal(signal.SIGTERM, lambda n, f: got.append(n))  # stands in for an outer handler
    try:
        with RunTracker("harness") as tr:
            real_end = tr._end

            def end_under_fire(*args, **kwargs) -> None:  # SIGTERM lands while the status is being written
                os.kill(os.getpid(), signal.SIGTERM)
                real_end(*args, **kwargs)

            tr._end = end_under_fire  # type: ignore[method-assign]
    except KeyboardInterrupt:
        pytest.fail("a SIGTERM during __exit__ escaped before the run was ended")
    else:
        assert tr.status == "FINISHED" and _run(tr.run_id).info.status == "FINISHED"
        assert got == [signal.SIGTERM]  # re-delivered to the outer handler afterwards
    finally:
        signal.signal(signal.SIGTERM, prev)


def test_init_store_holds_a_directory_lock_while_creating_the_store(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Processes creating one fresh DB at once fail in alembic ("duplicate column name: step"); the flock
    # serialises them. flock conflicts between two open() descriptions even within one process.
    import fcntl

    seen: list[bool] = []

    def probe(uri: str) -> str:
        fd = os.open(tmp_path / "fresh", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(fd)
        return uri

    monkeypatch.setattr(store_mod, "MlflowClient", probe)
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    assert store_mod.init_store(uri) == uri and seen == [True]  # the parent directory was also created
    store_mod._initialized.discard(uri)
