"""The base model's run is logged once per (world, checkpoint), even when sweep workers start together."""
from __future__ import annotations

import multiprocessing as mp
from types import SimpleNamespace

from harness.baseline import BaseScores
from harness.config import resolve_config


def _base() -> BaseScores:
    acc = {"eval": {"sort": 30.0}, "val": {"sort": 28.0}}
    return BaseScores(checkpoint="abc", acc=acc, correct={}, responses={}, pld=1.0, kl_prompts=[], kl_responses=[],
                      label_nll_token=2.0, label_nll_seq=3.0, own_nll_token=0.1, own_nll_seq=0.2, eval_seconds=0.0)


def _log(uri: str, barrier) -> None:
    import os
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import time

    import harness.run as run_mod
    lookup = run_mod.find_run

    def slow_lookup(*a, **k):  # a slow store widens the window between "no base run yet" and creating one
        found = lookup(*a, **k)
        time.sleep(1.0)
        return found
    run_mod.find_run = slow_lookup
    ensure_base_run = run_mod.ensure_base_run
    cfg = resolve_config("micro", "sft", overrides=["tracking.experiment=race"])
    world = SimpleNamespace(cfg=cfg.world, name=cfg.world.name, target="sort", data_key=cfg.world.data_key)
    barrier.wait()  # both processes look for the base run at the same moment
    ensure_base_run(cfg, world, _base())


def test_two_workers_starting_together_log_one_base_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_log, args=(uri, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'base'")
    assert len(runs) == 1 and runs[0].data.metrics["acc/sort"] == 30.0 and runs[0].data.metrics["val/acc/sort"] == 28.0
