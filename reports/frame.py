"""Tidy pandas frames built once from MLflow (search_runs + metric histories); nothing else is read.

`load(experiment)` returns a `Frames` with
  runs    one row per FINISHED run tagged kind=run: run_id, method, lr, seed, target, teacher_style, sweep,
          world, trial, parent_id, the final value of every metric (columns named as logged, e.g.
          `target_gain`, `drop/shift`, `cost/flops`) and `data_phi_mean` (mean of `train/data_phi` over steps)
  ckpts   one row per (run, evaluation step): the run's identifying columns plus the histories of
          CHECKPOINT_METRICS at that step; step 0 is the base model itself (gain 0, drop 0)
  parents one row per parent run (kind=parent): run_id, method, sweep
  base    the base model's run(s) (kind=base): run_id plus final metrics
`runs` and `ckpts` hold the sweep's method arms only; `all_runs` and `all_ckpts` also hold its variant arms
(e.g. SFT on other teacher styles, the off-policy dial), told apart by the `arm` column.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import metric_names as N
from harness import mlflow_api
from reports.samplers import run_samplers

CHECKPOINT_METRICS = (N.TARGET_GAIN, N.TARGET_GAIN_LO, N.TARGET_GAIN_HI, N.NONTARGET_DROP, N.NONTARGET_DROP_LO,
                      N.NONTARGET_DROP_HI, N.VAL_TARGET_GAIN, N.VAL_NONTARGET_DROP, N.PLD_DRIFT, N.PLD_RISE,
                      N.KL_TO_BASE, N.COST_FLOPS)
PHI = N.DATA_PHI
ID_COLUMNS = ("run_id", "method", "arm", "lr", "seed", "target", "teacher_style", "sweep", "world", "trial",
              "parent_id")
_TAGS = {"method": "tags.method", "seed": "tags.seed", "target": "tags.target", "teacher_style": "tags.teacher_style",
         "sweep": "tags.sweep", "world": "tags.world", "trial": "tags.trial", "parent_id": "tags.mlflow.parentRunId",
         "kind": "tags.kind", "arm": "tags.arm"}


@dataclass
class Frames:
    experiment: str
    runs: pd.DataFrame
    ckpts: pd.DataFrame
    parents: pd.DataFrame
    base: pd.DataFrame
    all_runs: pd.DataFrame | None = None
    all_ckpts: pd.DataFrame | None = None


def default_experiment(client) -> str | None:
    """The most recently updated experiment holding at least one run tagged kind=run, or None."""
    exps = client.search_experiments(order_by=["last_update_time DESC"])
    for exp in exps:
        if client.search_runs([exp.experiment_id], "tags.kind = 'run'", max_results=1):
            return exp.name
    return None


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """search_runs' wide frame -> identifying columns + final metrics named as logged."""
    out = pd.DataFrame({"run_id": df["run_id"], "status": df["status"]})
    for name, col in _TAGS.items():
        out[name] = _col(df, col)
    out["arm"] = out["arm"].fillna(out["method"])  # runs outside a sweep: their method is their arm
    out["sampler"] = run_samplers(df)  # which backend drew the run's data (reports.samplers)
    out["lr"] = pd.to_numeric(_col(df, "params.train.lr"), errors="coerce")
    out["world_seed"] = pd.to_numeric(_col(df, "params.world.seed"), errors="coerce")
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce").astype("Int64")
    out["trial"] = pd.to_numeric(out["trial"], errors="coerce").astype("Int64")
    metrics = df[[c for c in df.columns if c.startswith("metrics.")]].rename(columns=lambda c: c[len("metrics."):])
    return pd.concat([out, metrics], axis=1)


def histories(client, run_ids: list[str], keys: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Long frame (run_id, key, step, value) of every value ever logged under `keys` by `run_ids`.

    On a SQL store one query per key covers all runs (`get_metric_history_bulk`); elsewhere (a tracking
    server) the per-(run, key) `get_metric_history` calls go through a small thread pool.
    """
    rows: list[tuple[str, str, int, float, int]] = []
    bulk = mlflow_api.bulk_metric_history(client)
    if bulk is not None:
        for key in keys:
            for i in range(0, len(run_ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = run_ids[i:i + 500]
                for m in bulk(chunk, key, max_results=10 ** 9):
                    rows.append((m.run_id, key, m.step, m.value, m.timestamp))
    else:
        pairs = [(r, k) for r in run_ids for k in keys]
        with ThreadPoolExecutor(8) as pool:
            for (r, k), hist in zip(pairs, pool.map(lambda p: client.get_metric_history(*p), pairs)):
                rows.extend((r, k, m.step, m.value, m.timestamp) for m in hist)
    long = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    # A metric logged twice at one step (the final eval is re-logged with the run's summary): keep the last.
    return (long.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
            .drop_duplicates(["run_id", "key", "step"], keep="last").drop(columns="timestamp"))


def load(experiment: str | None = None, client=None) -> Frames:
    """Frames of `experiment` (default: the newest one with runs) from the harness's tracking store."""
    import mlflow

    from harness.errors import HarnessError
    from harness.store import init_store

    client = client or init_store()
    if experiment is None:
        experiment = default_experiment(client)
        if experiment is None:
            raise HarnessError("no MLflow experiment has runs tagged kind=run; run `harness sweep` first "
                               f"(tracking store: {client.tracking_uri})")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments())
        raise HarnessError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}; "
                           f"experiments: {names or 'none'}")
    # search_runs reads MLflow's global URI: point it at our store, then restore the global exactly as it
    # was (usually unset, so MLFLOW_TRACKING_URI keeps working for whatever runs next in this process).
    with mlflow_api.global_tracking_uri(client.tracking_uri):
        wide = mlflow.search_runs([exp.experiment_id], max_results=100_000, output_format="pandas")
    if wide.empty:
        wide = pd.DataFrame(columns=["run_id", "status"])
    tidy = _tidy(wide)
    runs = tidy[(tidy["kind"] == "run") & (tidy["status"] == "FINISHED")].copy()
    if runs.empty:
        raise HarnessError(f"experiment {experiment!r} has no FINISHED runs tagged kind=run; nothing to report")
    parents = tidy.loc[tidy["kind"] == "parent", ["run_id", "method", "sweep"]].reset_index(drop=True)
    base = tidy[(tidy["kind"] == "base") & (tidy["status"] == "FINISHED")].dropna(axis=1, how="all")

    long = histories(client, runs["run_id"].tolist(), [*CHECKPOINT_METRICS, PHI])
    phi = long[long["key"] == PHI].groupby("run_id")["value"].mean().rename("data_phi_mean")
    runs = runs.drop(columns=["kind", "status"]).merge(phi, how="left", left_on="run_id", right_index=True)
    runs = runs.sort_values(["method", "lr", "seed"], kind="stable").reset_index(drop=True)

    evals = long[long["key"] != PHI].pivot_table(index=["run_id", "step"], columns="key", values="value",
                                                 aggfunc="last").reset_index()
    evals.columns.name = None
    evals = evals[evals[N.TARGET_GAIN].notna()]  # training-only steps have no evaluation
    for k in CHECKPOINT_METRICS:
        if k not in evals.columns:
            evals[k] = np.nan
    ids = runs[[c for c in ID_COLUMNS if c in runs.columns]]
    ckpts = ids.merge(evals, on="run_id", how="inner").sort_values(["method", "lr", "seed", "step"], kind="stable")
    ckpts = ckpts.reset_index(drop=True)
    main_runs, main_ckpts = runs[runs["arm"] == runs["method"]], ckpts[ckpts["arm"] == ckpts["method"]]
    return Frames(experiment, main_runs.reset_index(drop=True), main_ckpts.reset_index(drop=True), parents,
                  base.reset_index(drop=True), runs, ckpts)


def final_checkpoints(ckpts: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation checkpoint of every run."""
    return ckpts.sort_values("step").groupby("run_id", sort=False).tail(1).sort_index()


def trained_checkpoints(ckpts: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints after training began (step > 0): step 0 is the base model, shared by every method."""
    return ckpts[ckpts["step"] > 0]


def aggregate_seeds(final: pd.DataFrame, metrics: tuple[str, ...] = (N.TARGET_GAIN, N.NONTARGET_DROP)) -> pd.DataFrame:
    """Mean over seeds per (method, lr) with the 95% interval of `reports.stats.seed_interval` (the one rule)."""
    from reports.stats import seed_interval

    rows = []
    for (method, lr), g in final.groupby(["method", "lr"], sort=False, dropna=False):
        row = {"method": method, "lr": lr, "n_seeds": len(g)}
        for m in metrics:
            halves = (g[f"{m}_hi"] - g[f"{m}_lo"]) / 2 if f"{m}_hi" in g else None
            mean, lo, hi = seed_interval(g[m], halves)
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def best_lr(final: pd.DataFrame) -> dict[str, float]:
    """Each method's learning rate with the best final trade-off *on validation*: highest mean (gain − drop).

    Ties go to the lower drop, then the lower learning rate. Used wherever one run per method is shown; the
    figures then show that run's eval numbers, so the choice and the numbers shown come from disjoint splits.
    """
    agg = aggregate_seeds(final, (N.VAL_TARGET_GAIN, N.VAL_NONTARGET_DROP))
    agg["net"] = agg[N.VAL_TARGET_GAIN] - agg[N.VAL_NONTARGET_DROP]
    agg = agg.sort_values(["method", "net", N.VAL_NONTARGET_DROP, "lr"], ascending=[True, False, True, True])
    return agg.groupby("method", sort=False)["lr"].first().to_dict()


def validated_front(ck: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints on the Pareto front of their *validation* (gain, drop), in eval-gain order.

    Membership is a selection, so it reads validation; the rows carry eval numbers for display, which the
    choice never saw (a front picked on eval would flatter every method by its luckiest checkpoints).
    """
    from reports.pareto import pareto_mask

    rows = ck.iloc[np.flatnonzero(pareto_mask(ck[N.VAL_TARGET_GAIN], ck[N.VAL_NONTARGET_DROP]))]
    return rows.sort_values(N.TARGET_GAIN, kind="stable")
