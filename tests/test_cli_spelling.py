"""One spelling per setting: flags and key=value mean the same in run, sweep, report and ui; read-only
commands never create a store; the command written into a sweep's description rebuilds its spec."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from harness.cli import _run_overrides, _sweep_inputs, main, parse_args
from harness.config import resolve_config
from harness.errors import HarnessError
from sweeps.spec import load_spec


def _spec(argv: list[str]):
    path, tokens, fields = _sweep_inputs(parse_args(["sweep", *argv]))
    return load_spec(path, tokens, **fields)


def _run_cfg(argv: list[str]):
    args = parse_args(["run", *argv])
    over = _run_overrides(args)   # first: it moves world=, method=, ... onto args
    return resolve_config(world=args.world, method=args.method, preset=args.preset, overrides=over)


def test_sweep_flags_and_key_value_are_one_setting():
    flags = _spec(["--world", "micro", "--methods", "sft,grpo", "--trials", "2", "--seeds", "0,1", "--name", "x"])
    keys = _spec(["world=micro", "methods=[sft, grpo]", "trials=2", "seeds=[0, 1]", "name=x"])
    mixed = _spec(["world=micro", "--method", "sft,grpo", "trials=2", "--seed", "0,1", "experiment=x"])
    assert flags == keys == mixed
    got = (flags.world, flags.methods, flags.trials, flags.seeds, flags.name)
    assert got == ("micro", ["sft", "grpo"], 2, [0, 1], "x")
    assert _spec(["methods=all"]).methods == "all" and _spec(["seeds=3"]).seeds == [3]


def test_sweep_takes_run_settings_for_every_trial(tmp_path):
    spec = _spec(["world=micro", "train.max_steps=20", "world.target=rev", "sft.kl_beta=0.05"])
    assert spec.world == "micro"
    default = load_spec(None).overrides  # the default recipe's own settings stay under the command line's
    assert spec.overrides == {**default, "train": {"max_steps": 20}, "world": {"target": "rev"}, "sft": {"kl_beta": 0.05}}
    preset = tmp_path / "p.yaml"
    preset.write_text("train: {max_steps: 7, eval_every: 7}\n")
    spec = _spec(["--preset", str(preset), "train.max_steps=9"])     # key=value over the preset, as in `run`
    assert spec.overrides["train"] == {"max_steps": 9, "eval_every": 7}


def test_run_flags_and_key_value_are_one_setting():
    a = _run_cfg(["--world", "micro", "--method", "grpo", "--seed", "3", "--experiment", "e", "train.lr=1e-4"])
    b = _run_cfg(["world=micro", "method=grpo", "seed=3", "experiment=e", "train.lr=1e-4"])
    assert a == b
    assert (a.world.name, a.method, a.train.seed, a.tracking.experiment) == ("micro", "grpo", 3, "e")


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--world", "micro", "world=toy"], "disagree"),
    (["sweep", "trials=2", "trials=3"], "disagree"),
    (["run", "--seed", "1", "train.seed=2"], "disagree"),
    (["run", "seeds=0,1"], "takes one seed"),
    (["sweep", "--bogus"], "has no option --bogus"),
    (["sweep", "trials=many"], "trials"),
    (["report", "colour=red"], "unknown setting 'colour=red'"),
    (["ui", "port=x"], "port"),
])
def test_bad_settings_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())   # nothing ran, nothing was written


def test_report_and_ui_spell_the_experiment_alike():
    for argv in (["report", "--experiment", "e", "--out", "o", "--no-log"], ["report", "experiment=e", "out=o",
                                                                             "no_log=true"],
                 ["report", "name=e", "--out", "o", "no_log=yes"]):
        args = parse_args(argv)
        from harness.cliargs import take_settings
        from reports.cli import REPORT_SETTINGS
        take_settings(args, REPORT_SETTINGS, args.overrides, strict=True)
        assert (args.experiment, args.out, args.no_log) == ("e", "o", True)


@pytest.mark.parametrize("command", [["report"], ["ui", "--no-browser"]])
def test_read_only_commands_never_create_a_store(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err and "run `harness sweep`" in err
    assert "MLFLOW_TRACKING_URI is unset" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    # an empty database file (or one from another program) is not migrated into an MLflow store either
    db = tmp_path / "other.db"
    sqlite3.connect(db).close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    before = db.read_bytes()
    assert main(command) == 2
    assert "holds no MLflow store" in capsys.readouterr().err
    assert db.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["other.db"]


def test_open_store_reads_an_existing_store_without_writing(tmp_path):
    from harness.store import ensure_experiment, init_store, open_store
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        init_store(uri)
        ensure_experiment("e")
        stamp = (tmp_path / "mlflow.db").stat().st_mtime_ns
        assert open_store(uri).get_experiment_by_name("e") is not None
        assert (tmp_path / "mlflow.db").stat().st_mtime_ns == stamp
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_the_description_command_rebuilds_the_spec(tmp_path):
    from sweeps.describe import reproduce_command
    variants = "variants={sft@mild: {method: sft, seeds: [0], overrides: {world: {teacher_style: mild}}}}"
    for argv in (["world=micro", "methods=sft,grpo", "trials=3", "seeds=0,1", "name=a b", "train.max_steps=5"],
                 ["--world", "micro", "objective=gain_at_drop_budget", "budget=2.5", "sampler=tpe", variants,
                  "methods=[sft@mild]"]):
        spec = _spec(argv)
        cmd = reproduce_command(spec, workers=2)
        assert cmd.startswith("harness sweep ") and cmd.endswith("--workers 2")
        import shlex
        words = [w for w in shlex.split(cmd)[2:] if w not in ("--workers", "2")]
        assert _spec(words) == spec, cmd
    one = reproduce_command(_spec(["world=micro", "methods=sft,grpo"]), arm="grpo")
    assert "methods=grpo" in one and "sft" not in one
    spec_file = Path(__file__).parents[1] / "sweeps" / "default.yaml"
    assert reproduce_command(load_spec(spec_file), str(spec_file)) == f"harness sweep --spec {spec_file}"


def test_password_never_reaches_a_description(monkeypatch):
    from sweeps.describe import reproduce_command
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:secret@db/mlflow")
    cmd = reproduce_command(_spec(["storage=postgresql://u:secret@db/optuna"]))
    assert "secret" not in cmd and "u:***@db/optuna" in cmd and cmd.startswith("MLFLOW_TRACKING_URI=")


def test_harness_error_for_a_bad_spec_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(HarnessError):
        _spec(["trails=3"])


def test_output_cut_short_by_a_pipe_ends_quietly():
    """`harness list | head -1`: the reader leaves early; no BrokenPipeError traceback, and the first line arrives."""
    import subprocess
    import sys
    out = subprocess.run(f"{sys.executable} -m harness.cli list | head -1", shell=True, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith("worlds") and "Traceback" not in out.stderr, out.stderr
