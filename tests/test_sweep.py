"""Sweeps on the micro world: exact trial counts, resuming, kill -9 recovery, concurrent workers, failures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from harness.errors import HarnessError
from harness.method import SweepParam
from sweeps.driver import run_sweep
from sweeps.study import grid, open_storage
from sweeps.spec import load_spec

FAST = ["world=micro", "seeds=[0]", "overrides={train: {max_steps: 2, eval_every: 2}, eval: {bootstrap_iters: 50}}"]


def test_grid_is_log_spaced_over_the_declared_range():
    pts = grid({"train.lr": SweepParam(1e-5, 1e-3)}, 3)
    assert [p["train.lr"] for p in pts] == pytest.approx([1e-5, 1e-4, 1e-3])   # exp of evenly spaced logs
    assert grid({"x": SweepParam(0.0, 1.0, log=False)}, 2) == [{"x": 0.0}, {"x": 1.0}]


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(HarnessError, match="Did you mean 'trials'"):
        load_spec(None, ["trails=3"])
    with pytest.raises(HarnessError, match="'trials'"):
        load_spec(None, ["trials=many"])
    bad = tmp_path / "s.yaml"
    bad.write_text("methods: [sft, sfd]\n")
    spec = load_spec(bad)
    from sweeps.spec import resolve_methods
    with pytest.raises(HarnessError, match="Did you mean 'sft'"):
        resolve_methods(spec)


def test_variants_are_arms_of_all_and_must_not_shadow_a_method(tmp_path):
    from harness.method import method_names
    from sweeps.spec import arm_method, arm_overrides, arm_seeds, resolve_methods
    spec = load_spec(None)   # the default spec declares the dial's variants
    assert resolve_methods(spec) == method_names() + ["sft@partial", "sft@mild", "sft@sparse", "sft@own"]
    assert arm_method(spec, "sft@mild") == "sft" and arm_seeds(spec, "sft@mild") == spec.seeds == [0, 1, 2, 3, 4]
    assert arm_seeds(spec, "grpo") == spec.seeds
    assert arm_overrides(spec, "sft@own")["world"]["teacher_style"] == "own"
    assert arm_overrides(spec, "sft") == spec.overrides == {"onpolicy_sft": {"prompts_per_epoch": 32}}
    with pytest.raises(HarnessError, match="has a method's name"):
        resolve_methods(load_spec(None, ["variants={grpo: {method: sft}}"]))
    with pytest.raises(HarnessError, match="Did you mean 'sft@mild'"):
        resolve_methods(load_spec(None, ["methods=[sft@mlid]"]))


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, micro_world):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path


def _trials(name: str, method: str, path: Path) -> list:
    study = optuna.load_study(study_name=f"{name}-{method}", storage=open_storage(str(path / f"optuna-{name}.log")))
    return study.get_trials()


def _children(name: str):
    df = mlflow.search_runs(experiment_names=[name])
    return df[df["tags.kind"] == "run"]


def test_sweep_runs_exact_trials_nested_and_resumes_without_recomputing(sweep_dir):
    spec = load_spec(None, FAST + ["name=s1", "trials=2"], methods=["sft"])
    fronts = run_sweep(spec, progress=False)
    assert fronts["sft"]
    trials = _trials("s1", "sft", sweep_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    kids = _children("s1")
    assert len(kids) == 2 and set(kids.status) == {"FINISHED"}
    parent = mlflow.search_runs(experiment_names=["s1"], filter_string="tags.kind = 'parent'")
    assert len(parent) == 1 and parent.status.iloc[0] == "FINISHED"
    assert set(kids["tags.mlflow.parentRunId"]) == {parent.run_id.iloc[0]}
    assert sorted(t.user_attrs["mlflow_run_ids"][0] for t in trials) == sorted(kids.run_id)
    # re-running the same command computes nothing; raising the count adds exactly the difference
    run_sweep(spec, progress=False)
    assert len(_trials("s1", "sft", sweep_dir)) == 2 and len(_children("s1")) == 2
    run_sweep(load_spec(None, FAST + ["name=s1", "trials=3"], methods=["sft"]), progress=False)
    assert sum(t.state == TrialState.COMPLETE for t in _trials("s1", "sft", sweep_dir)) == 3
    assert len(_children("s1")) == 3


def test_every_trial_failing_marks_fail_and_failed_and_raises(sweep_dir, monkeypatch):
    from methods.sft import SFT

    def boom(self, ctx, batch):
        raise RuntimeError("broken on purpose")
    monkeypatch.setattr(SFT, "loss", boom)
    spec = load_spec(None, FAST + ["name=s2", "trials=2"], methods=["sft"])
    with pytest.raises(RuntimeError, match="every trial"):
        run_sweep(spec, progress=False)
    trials = _trials("s2", "sft", sweep_dir)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert "broken on purpose" in trials[0].user_attrs["failure_reason"]
    kids = _children("s2")
    assert set(kids.status) == {"FAILED"} and kids["tags.failure_reason"].str.contains("broken").all()


def _sweep_cmd(name: str, trials: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", "--methods", "sft", "--quiet", "world=micro", "seeds=[0]",
            f"name={name}", f"trials={trials}", f"overrides={{train: {{max_steps: {steps}, eval_every: {steps}}}}}"]


def test_two_processes_at_once_finish_with_exactly_the_spec(sweep_dir):
    procs = [subprocess.Popen(_sweep_cmd("s3", 3, 2), cwd=sweep_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):  # a failure's report shows the whole output (an assert message is cut short)
        if p.returncode:
            print(f"--- a sweep process exited {p.returncode}; its output:\n{out}")
    assert all(p.returncode == 0 for p in procs)
    assert not any("database is locked" in o for o in outs)
    trials = _trials("s3", "sft", sweep_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len(_children("s3")) == 3


def test_kill_9_mid_trial_then_rerun_recovers_one_to_one(sweep_dir):
    # 400 steps: a micro run takes ~1.2 s per 80 steps, and one polled once a second could start and finish unseen
    proc = subprocess.Popen(_sweep_cmd("s4", 2, 400), cwd=sweep_dir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:   # wait until a trial's MLflow run is training
        time.sleep(0.2)
        try:
            kids = _children("s4")
            if len(kids) and (kids.status == "RUNNING").any():
                break
        except Exception:
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(t.state == TrialState.RUNNING for t in _trials("s4", "sft", sweep_dir))
    done = subprocess.run(_sweep_cmd("s4", 2, 400), cwd=sweep_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials("s4", "sft", sweep_dir)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert any(t.state == TrialState.FAIL for t in trials)          # the killed trial, retried as a new one
    kids = _children("s4")
    finished = kids[kids.status == "FINISHED"]
    assert sorted(finished.run_id) == sorted(t.user_attrs["mlflow_run_ids"][0] for t in complete)
    # the run being trained when the process died is KILLED (none is left RUNNING); if the kill landed between
    # a trial's start and its run's creation there is no such run
    assert set(kids.status) <= {"FINISHED", "KILLED"} and (kids.status == "KILLED").sum() <= 1


def _pg_bin(name: str) -> str | None:
    import glob
    import shutil
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL server on a free local port (skipped where PostgreSQL is not installed)."""
    import shutil
    import socket
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (pip install -e '.[dev]')")
    import tempfile
    data = Path(tempfile.mkdtemp(prefix="harness-pg-"))
    # initdb refuses to run as root: run the server as the postgres user when we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 and shutil.which("runuser") else []
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_user + [initdb, "-D", str(data), "-U", "bench", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1", "-w", "start",
                              "-l", str(data / "log")], check=True, capture_output=True)
    try:
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql+psycopg2://bench@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.postgres
def test_two_workers_share_one_postgresql_study(sweep_dir, postgres):
    cmd = _sweep_cmd("pg", 3, 2) + ["--storage", postgres]
    procs = [subprocess.Popen(cmd, cwd=sweep_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):  # a failure's report shows the whole output (an assert message is cut short)
        if p.returncode:
            print(f"--- a sweep process exited {p.returncode}; its output:\n{out}")
    assert all(p.returncode == 0 for p in procs)
    study = optuna.load_study(study_name="pg-sft", storage=open_storage(postgres))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert len(_children("pg")) == 3


def test_a_variant_arm_trains_its_method_with_its_settings(sweep_dir):
    spec = load_spec(None, FAST + ["name=s6", "trials=1", "methods=[sft@mild]",
                                   "variants={sft@mild: {method: sft, seeds: [0], "
                                   "overrides: {world: {teacher_style: mild}}}}"])
    run_sweep(spec, progress=False)
    kids = _children("s6")
    assert len(kids) == 1 and kids.status.iloc[0] == "FINISHED"
    assert (kids["tags.arm"].iloc[0], kids["tags.method"].iloc[0], kids["tags.teacher_style"].iloc[0]) == \
        ("sft@mild", "sft", "mild")
    parent = mlflow.search_runs(experiment_names=["s6"], filter_string="tags.kind = 'parent'")
    assert parent["tags.arm"].tolist() == ["sft@mild"] and parent["tags.method"].tolist() == ["sft"]


def test_isolated_runs_happen_in_child_processes_and_a_hung_run_fails_only_its_trial(sweep_dir):
    spec = load_spec(None, FAST + ["name=iso", "trials=1", "isolate=true"], methods=["sft"])
    assert run_sweep(spec, progress=False)["sft"]
    kids = _children("iso")
    assert len(kids) == 1 and set(kids.status) == {"FINISHED"}
    assert str(os.getpid()) not in set(kids["tags.pid"])  # the run logged from a process of its own
    hung = load_spec(None, FAST + ["name=iso2", "trials=1", "isolate=true", "run_timeout_h=1e-5"], methods=["sft"])
    with pytest.raises(RuntimeError, match="every trial"):
        run_sweep(hung, progress=False)
    (trial,) = _trials("iso2", "sft", sweep_dir)
    assert trial.state == TrialState.FAIL and "timed out" in trial.user_attrs["failure_reason"]


def test_workers_own_equal_slices_of_the_devices():
    from sweeps.isolation import worker_devices
    spec = load_spec(None, ["devices=[0,1,2,3]"])
    assert [worker_devices(spec, i, 2) for i in range(2)] == ["0,1", "2,3"]
    assert worker_devices(load_spec(None, []), 0, 2) is None
    with pytest.raises(HarnessError, match="at least one"):
        worker_devices(spec, 0, 5)
    assert load_spec(None, ["processes_per_run=2"]).isolated


def test_processes_per_run_launches_each_run_on_two_gloo_ranks(sweep_dir):
    pytest.importorskip("accelerate")
    spec = load_spec(None, FAST + ["name=ddp", "trials=1", "processes_per_run=2"], methods=["sft"])
    assert run_sweep(spec, progress=False)["sft"]
    kids = _children("ddp")
    assert len(kids) == 1 and set(kids.status) == {"FINISHED"} and set(kids["tags.world_size"]) == {"2"}


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("sweeps/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_sweep_spec_resolves_for_every_arm(path):
    from harness.config import resolve_config
    from sweeps.spec import arm_method, arm_overrides, resolve_methods
    from sweeps.study import search_space

    spec = load_spec(path)
    for arm in resolve_methods(spec):
        search_space(spec, arm)
        cfg = resolve_config(world=spec.world, method=arm_method(spec, arm), overrides=arm_overrides(spec, arm))
        assert cfg.method == arm_method(spec, arm)
    if path.stem.startswith("robust-") and not path.stem.endswith("-tuned"):
        # robustness worlds change only the target or the world seed: the default recipe everywhere else
        default = load_spec(None).overrides
        recipe = {k: v for k, v in spec.overrides.items() if k != "world"}
        assert recipe == {k: v for k, v in default.items() if k != "world"}
        assert set(spec.overrides.get("world", {})) <= {"target", "seed"}
        assert not spec.space
        assert spec.steps_rule == load_spec(None).steps_rule and spec.steps_rule is not None


def test_the_default_dial_arms_train_one_stated_rate_and_the_methods_their_grid():
    from sweeps.spec import arm_trials
    from sweeps.study import search_space
    spec = load_spec(None, [])
    assert arm_trials(spec, "sft") == 3 and grid(search_space(spec, "sft"), 3)[-1]["train.lr"] == pytest.approx(1e-3)
    for arm in ("sft@partial", "sft@mild", "sft@sparse", "sft@own"):
        assert arm_trials(spec, arm) == 1
        assert grid(search_space(spec, arm), 1) == [{"train.lr": 1e-3}]
