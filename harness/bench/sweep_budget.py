"""The main job's budget: `python -m harness.bench.sweep_budget [--workers 2] [--fresh-cache] [spec key=value ...]`.

Runs `harness sweep --methods all` (the default spec: toy world, 3 learning rates per method, the default
seeds, the dial variants) in a throw-away directory with its own MLflow store and Optuna journal, then
prints the wall time and, per method, the mean seconds per run spent training, generating, evaluating and
elsewhere, read back from MLflow. `--fresh-cache` also pretrains the base into an empty cache (the
"fresh checkout" figure); otherwise the cached base is used (the first call builds it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

from harness import metric_names as N

COST = N.COST_SECONDS


def main() -> None:
    """Time one sweep and print the split."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fresh-cache", action="store_true", help="pretrain the base into an empty cache first")
    ap.add_argument("--dir", default=None, help="run here and keep the MLflow store (default: a temporary "
                                                "directory); then e.g. `cd DIR && harness report`")
    ap.add_argument("--from", dest="existing", default=None,
                    help="do not run: print the split of the `default` sweep already in DIR/mlflow.db (wall = first "
                         "run's start to last run's end)")
    ap.add_argument("overrides", nargs="*", help="sweep spec fields, e.g. seeds=[0]")
    args = ap.parse_args()
    if args.existing:
        import mlflow
        mlflow.set_tracking_uri(f"sqlite:///{os.path.abspath(args.existing)}/mlflow.db")
        runs = mlflow.search_runs(experiment_names=["default"], filter_string="tags.kind = 'run'",
                                  output_format="pandas")
        wall = (runs["end_time"].max() - runs["start_time"].min()).total_seconds()
        _print_split(runs, wall, f"harness sweep --methods all (from {args.existing}; wall = first run start to "
                                 "last run end)")
        return
    if args.dir:
        if os.path.exists(args.dir):
            print(f"--dir {args.dir} exists; name a new folder (a sweep's store is never overwritten)", file=sys.stderr)
            raise SystemExit(2)
        os.makedirs(args.dir)
    with (contextlib.nullcontext(os.path.abspath(args.dir)) if args.dir else tempfile.TemporaryDirectory()) as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        if args.fresh_cache:
            env["HARNESS_CACHE"] = os.path.join(tmp, "cache")
        cmd = [sys.executable, "-m", "harness.cli", "sweep", "--methods", "all", "--workers", str(args.workers),
               *args.overrides]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, check=True)
        wall = time.perf_counter() - t0

        import mlflow
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=["default"], filter_string="tags.kind = 'run'",
                                  output_format="pandas")
    _print_split(runs, wall, f"harness sweep --methods all --workers {args.workers} {' '.join(args.overrides)}"
                             f"{' (fresh cache: pretraining included)' if args.fresh_cache else ' (base cached)'}")


def _print_split(runs, wall: float, title: str) -> None:
    """Wall time and the per-arm mean seconds per run in training, generation, evaluation and elsewhere."""
    print(title)
    print(f"wall: {wall / 60:.1f} min ({wall:.0f} s) for {len(runs)} runs")
    print(f"\n{'arm':<14}{'runs':>5}{'train s':>9}{'gen s':>8}{'eval s':>8}{'other s':>9}{'wall s':>8}   per run (mean)")
    for arm, g in runs.groupby("tags.arm", sort=False):
        tr, ge, ev, wa = (g[f"metrics.{k}"].mean() for k in COST)
        print(f"{arm:<14}{len(g):>5}{tr:>9.1f}{ge:>8.1f}{ev:>8.1f}{wa - tr - ge - ev:>9.1f}{wa:>8.1f}")
    tr, ge, ev, wa = (runs[f"metrics.{k}"].sum() for k in COST)
    print(f"{'all runs':<14}{len(runs):>5}{tr:>9.0f}{ge:>8.0f}{ev:>8.0f}{wa - tr - ge - ev:>9.0f}{wa:>8.0f}   total s")


if __name__ == "__main__":
    main()
