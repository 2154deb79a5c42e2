"""Adding a method is one new file: a throw-away method written into a module of its own appears in `harness list`,
runs on micro and is swept, with no edit anywhere else (no list of methods to extend, no test table)."""
from __future__ import annotations

import sys
import textwrap

import mlflow
import pytest

import methods
from harness.cli import main
from harness.method import METHODS, method_names

NAME = "throwaway_sft"
# SFT on the expert labels, written as a user would write a new method file (its loss the helper SFT uses).
SOURCE = textwrap.dedent(f'''
    """A test's throw-away method: SFT on the expert labels, under another name."""
    from harness.data import TrainData
    from harness.method import Method, SweepParam, register
    from methods._sft_family import expert_examples, expert_items, nll_loss


    @register
    class Throwaway(Method):
        name = "{NAME}"
        description = "a test's throw-away method (SFT under another name)"
        paper = "none: tests/test_new_method.py"
        order = 1000
        sweep = {{"train.lr": SweepParam(1e-3, 2e-3)}}

        def data(self, ctx, phase):
            return TrainData(expert_examples(ctx, expert_items(ctx, True)))

        def loss(self, ctx, batch):
            return nll_loss(batch.logp, batch.loss_mask)
''')
FAST = ["world=micro", "seeds=[0]", "trials=1", "variants={}",
        "overrides={train: {max_steps: 2, eval_every: 2}, eval: {bootstrap_iters: 50}}"]


@pytest.fixture
def new_method_file(micro_world, tmp_path, monkeypatch):
    """A folder on the methods package's path holding one new method module; unregistered again afterwards."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{NAME}.py").write_text(SOURCE)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(plugins)])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
    yield
    METHODS._items.pop(NAME, None)
    sys.modules.pop(f"methods.{NAME}", None)


def test_a_new_method_file_is_listed_run_and_swept(new_method_file, capsys):
    assert NAME in method_names()
    assert main(["list"]) == 0
    assert NAME in capsys.readouterr().out
    assert main(["run", "--world", "micro", "--method", NAME, "--quiet", "train.max_steps=2", "train.eval_every=2",
                 "train.lr=1e-3", "eval.bootstrap_iters=50"]) == 0
    assert main(["sweep", "--methods", NAME, "--name", "tw", "--quiet", *FAST]) == 0
    runs = mlflow.search_runs(experiment_names=["tw"], filter_string="tags.kind = 'run'")
    assert len(runs) == 1 and runs["tags.method"].iloc[0] == NAME and runs.status.iloc[0] == "FINISHED"
    assert runs["metrics.target_gain"].notna().all()
