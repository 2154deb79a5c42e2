"""Where a run's time goes, per method: `python -m benchmarks.run_costs [--world toy] [--methods all] [key=value ...]`.

Runs each method once (the sweep's default settings plus any overrides) into a
throw-away MLflow store and prints, per method, the seconds spent training
(forward/backward/optimizer, incl. TMS's teacher steps), generating (sampling
for on-policy data and rollouts), evaluating (lm-eval greedy generation on every
task, PLD and KL) and the rest (setup, logging), and the run's wall time. The
base model must be cached (the first call pretrains it).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from harness.config import resolve_config
from harness.run import run
from methods.base import method_names


def main() -> None:
    """Run the methods one after another and print the time split table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="toy")
    ap.add_argument("--methods", default="all", help="comma-separated names, or all")
    ap.add_argument("overrides", nargs="*", help="run settings, e.g. train.lr=3e-4 train.max_steps=100")
    args = ap.parse_args()
    names = method_names() if args.methods == "all" else args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        rows = []
        for name in names:
            cfg, mcfg = resolve_config(world=args.world, method=name, preset=None, overrides=args.overrides)
            cfg.tracking.experiment = "run-costs"
            t = time.perf_counter()
            final = run(cfg, mcfg, progress=False)
            wall = time.perf_counter() - t
            train, gen, ev = final["cost/train_s"], final["cost/gen_s"], final["cost/eval_s"]
            rows.append((name, train, gen, ev, wall - train - gen - ev, wall, final["target_gain"], final["nontarget_drop"]))
            print(f"  {name}: {wall:.1f} s", flush=True)
    print(f"\nworld={args.world} overrides={' '.join(args.overrides) or '(none)'}")
    print(f"{'method':<14}{'train s':>9}{'gen s':>8}{'eval s':>8}{'other s':>9}{'wall s':>8}{'gain':>8}{'drop':>7}")
    for r in rows:
        print(f"{r[0]:<14}{r[1]:>9.1f}{r[2]:>8.1f}{r[3]:>8.1f}{r[4]:>9.1f}{r[5]:>8.1f}{r[6]:>+8.1f}{r[7]:>7.1f}")
    tot = [sum(r[i] for r in rows) for i in range(1, 6)]
    print(f"{'total':<14}{tot[0]:>9.1f}{tot[1]:>8.1f}{tot[2]:>8.1f}{tot[3]:>9.1f}{tot[4]:>8.1f}")


if __name__ == "__main__":
    main()
