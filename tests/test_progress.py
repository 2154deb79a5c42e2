"""A sweep's progress: one line per finished or failed run plus summary lines in a log, one live display
redrawn in place in a terminal (checked on a pseudo-terminal), trial counts on the parent runs, and
objective names on the Optuna studies."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from sweeps import progress as P
from sweeps import progress_events as E
from sweeps.spec import load_spec
from sweeps.study import open_storage

RUN_LINE = re.compile(r"^\d\d:\d\d:\d\d done\s+(\S+)\s+trial (\d+)\s+seed (\d+)\s+lr (\S+)"
                      r"\s+gain\s+(\S+)\s+drop\s+(\S+)\s+(\d+\.\d) s\s+\((\d+)/(\d+) runs\)$")


def _display(spec, arms, **kw):
    storage = optuna.storages.InMemoryStorage()
    for a in arms:
        study = optuna.create_study(study_name=f"{spec.name}-{a}", storage=storage, directions=["maximize", "minimize"])
        for _ in range(spec.trials):
            study.enqueue_trial({"train.lr": 1e-4})
    out = io.StringIO()
    return P.SweepProgress(spec, arms, storage, workers=2, live=False, stream=out, **kw), storage, out


def test_log_lines_per_run_failures_and_summary_with_eta():
    spec = load_spec(None, ["name=t", "world=micro", "trials=2", "seeds=[0, 1]", "variants={}"], methods=["sft"])
    disp, storage, out = _display(spec, ["sft"], summary_every_s=0.0)
    study = optuna.load_study(study_name="t-sft", storage=storage)
    with disp:
        trial = study.ask()   # the display counts trials from the storage, as a worker leaves them there
        E.set_sink(disp.handle)
        try:
            E.run_started("sft", trial.number, 0, {"train.lr": 3e-4})
            E.run_finished("sft", trial.number, 0, {"target_gain": 12.5, "nontarget_drop": 1.25})
            E.run_started("sft", trial.number, 1, {"train.lr": 3e-4})
            E.run_finished("sft", trial.number, 1, {"target_gain": 10.0, "nontarget_drop": 0.0}, reused=True)
            study.tell(trial, [11.0, 0.5])
            trial = study.ask()
            E.run_started("sft", trial.number, 0, {"train.lr": 1e-3})
            disp.tick()
            E.trial_failed("sft", trial.number, "RuntimeError: broken on purpose")
            study.tell(trial, state=TrialState.FAIL)
        finally:
            E.set_sink(None)
    lines = out.getvalue().splitlines()
    done = [m.groups() for m in map(RUN_LINE.match, lines) if m]
    assert done[0] == ("sft", "0", "0", "3.0e-04", "+12.5", "+1.2", done[0][6], "1", "4")
    assert any(" reused sft" in x or x[9:].startswith("reused sft") for x in lines)
    failed = [x for x in lines if " FAILED sft" in x]
    assert len(failed) == 1 and "trial 1" in failed[0] and "seed 0" in failed[0] and "lr 1.0e-03" in failed[0]
    assert "broken on purpose" in failed[0]
    summaries = [x for x in lines if "sweep 't':" in x]
    # at start, on the tick while a run was going (with an ETA from the finished run), and at the end
    assert len(summaries) >= 3 and "0/2 trials done (0/4 runs)" in summaries[0]
    assert any("1/2 trials done (2/4 runs), 1 running" in x and "left (ETA " in x for x in summaries)
    assert "1/2 trials done (2/4 runs), 0 running, 1 failed" in summaries[-1] and "nothing left" in summaries[-1]
    assert not any("waiting" in x for x in lines)   # no status table in a log


def test_a_display_problem_never_fails_a_trial():
    E.set_sink(lambda ev: 1 / 0)
    try:
        E.run_started("sft", 0, 0, {})
        E.run_finished("sft", 0, 0, {"target_gain": 1.0, "nontarget_drop": 0.0})
    finally:
        E.set_sink(None)


def _sweep_argv(name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", "--world", "micro", "--methods", "sft", "trials=2",
            "seeds=0", "train.max_steps=2", "train.eval_every=2", "eval.bootstrap_iters=20", f"name={name}", *extra]


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, micro_world):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_a_log_gets_one_line_per_run_and_summaries(sweep_dir):
    """The `make run` case: stdout is a file; two worker processes report through a queue."""
    with open(sweep_dir / "run.log", "w") as log:
        proc = subprocess.run(_sweep_argv("lg", "--workers", "2"), cwd=sweep_dir, stdout=log,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    text = (sweep_dir / "run.log").read_text()
    assert proc.returncode == 0, text + proc.stderr
    lines = text.splitlines()
    runs = [m.groups() for m in map(RUN_LINE.match, lines) if m]
    assert sorted((r[0], r[1], r[2]) for r in runs) == [("sft", "0", "0"), ("sft", "1", "0")]
    assert sorted(r[3] for r in runs) == ["1.0e-03", "1.0e-04"] and {r[8] for r in runs} == {"2"}
    summaries = [x for x in lines if x.startswith("sweep 'lg': ")]
    assert len(summaries) >= 2 and "2/2 trials done (2/2 runs)" in summaries[-1]
    assert "\x1b[" not in text and "\r" not in text      # no terminal control codes in a log
    assert len(lines) < 15, text
    # the parent run shows the progress, the studies name their objectives
    parent = mlflow.search_runs(experiment_names=["lg"], filter_string="tags.kind = 'parent'")
    assert parent["tags.progress"].iloc[0] == "2/2 trials done"
    hist = mlflow.MlflowClient().get_metric_history(parent.run_id.iloc[0], "trials/complete")
    assert sorted(m.value for m in hist)[-1] == 2 and {m.step for m in hist} >= {1, 2}
    study = optuna.load_study(study_name="lg-sft", storage=open_storage(str(sweep_dir / "optuna-lg.log")))
    assert study.metric_names == ["val_target_gain", "val_nontarget_drop"]


def _read_pty(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_a_terminal_gets_one_live_display(sweep_dir):
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140"}
    proc = subprocess.Popen(_sweep_argv("tty"), cwd=sweep_dir, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    try:
        raw = _read_pty(master, proc, 300)
        assert proc.wait(timeout=60) == 0, raw.decode(errors="replace")[-2000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = raw.decode(errors="replace")
    # rich's Live: the cursor is hidden while it runs, and each refresh moves up over the previous frame and
    # erases it, i.e. the display is redrawn in place instead of being printed again below
    assert "\x1b[?25l" in text and "\x1b[?25h" in text
    assert re.search(r"\x1b\[1A|\x1b\[\d*F|\x1b\[2K", text)
    frames = text.count("front (gain, drop)")
    assert frames >= 2, text[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert len(re.findall(r"done\s+sft\s+trial \d", plain)) == 2      # each finished run once, above the display
    assert "2/2 trials done (2/2 runs)" in plain


def test_the_eta_counts_arms_whose_trials_are_not_asked_yet():
    """2 arms x 1 trial x 2 seeds, 2 workers; sft's first run took 100 s and grpo has not started (its trial is
    not asked yet): left = (sft's other seed 100 s + grpo's 2 runs at the mean 100 s) / 2 workers = 150 s."""
    spec = load_spec(None, ["name=e", "world=micro", "trials=1", "seeds=[0, 1]", "variants={}"],
                     methods=["sft", "grpo"])
    storage = optuna.storages.InMemoryStorage()
    for a in ("sft", "grpo"):
        optuna.create_study(study_name=f"e-{a}", storage=storage, directions=["maximize", "minimize"])
    sft = optuna.load_study(study_name="e-sft", storage=storage)
    trial = sft.ask()
    disp = P.SweepProgress(spec, ["sft", "grpo"], storage, workers=2, live=False, stream=io.StringIO())
    disp.handle({"event": "start", "arm": "sft", "trial": trial.number, "seed": 0, "lr": 1e-4})
    disp.handle({"event": "done", "arm": "sft", "trial": trial.number, "seed": 0, "lr": 1e-4, "gain": 1.0,
                 "drop": 0.0, "seconds": 100.0})
    assert disp._totals(fresh=True)["left_s"] == pytest.approx(150.0)
