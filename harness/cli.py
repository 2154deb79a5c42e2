"""`harness`: a thin command line; each subcommand parses and calls a typed function."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from harness.errors import HarnessError, TrainingDiverged

EPILOG = """\
examples:
  harness list                                   worlds, tasks and methods
  harness run --method sft                       SFT on the toy world, logged to MLflow
  harness run --world micro --method sft         the same on the tiny test world (seconds)
  harness run --method sft train.lr=3e-4 world.teacher_style=mild
  harness run --method sft --preset my.yaml sft.kl_beta=0.05
  harness sweep --methods all                    Optuna sweep over learning rates, every method
  harness report                                 Pareto plots and tables rebuilt from MLflow
  harness ui                                     browse runs at http://127.0.0.1:5000
"""


def _fmt(desc: str, epilog: str = "") -> dict:
    return {"description": desc, "epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def cmd_list(args: argparse.Namespace) -> int:
    """Print worlds, tasks and methods."""
    from benchmarks.tasks import FAMILIES
    from benchmarks.world import WORLD_PRESETS, WorldConfig
    from methods.base import get_method, method_names

    print("worlds:")
    for name, preset in WORLD_PRESETS.items():
        w = WorldConfig(name=name, **preset.get("world", {}))
        print(f"  {name:8s} target={w.target}, tasks={','.join(w.tasks)}, teacher_style={w.teacher_style}")
    print("\ntasks (any can be the target: world.target=<task>):")
    for name, fam in FAMILIES.items():
        print(f"  {name:8s} {fam.description}   e.g. {fam.prompt('12345' if name != 'count' else 'aabcadae')}")
    print("\nmethods:")
    for name in method_names():
        cls = get_method(name)
        print(f"  {name:14s} {cls.description}\n  {'':14s} paper: {cls.paper}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Resolve the config and train one run."""
    from harness.config import config_help, resolve_config
    from methods.base import get_method

    if args.help_config:
        from harness.config import RunConfig
        rows = config_help(RunConfig)
        cls = get_method(args.method or "sft")
        rows += config_help(cls.Config, f"{cls.name}.")
        for key, default, doc in rows:
            print(f"  {key:32s} {default:14s} {doc}")
        return 0
    cfg, mcfg = resolve_config(world=args.world, method=args.method, preset=args.preset, overrides=args.overrides)
    from harness.run import run
    final = run(cfg, mcfg, progress=not args.quiet)
    keys = ["target_gain", "target_gain_lo", "target_gain_hi", "nontarget_drop", "nontarget_drop_lo",
            "nontarget_drop_hi", "pld_drift", "kl_to_base", "cost/wall_s"]
    print(f"{cfg.method} on {cfg.world.name}/{cfg.world.target}: "
          + ", ".join(f"{k}={final[k]:.2f}" for k in keys if k in final))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run or resume a sweep."""
    from sweeps.driver import run_sweep
    from sweeps.spec import load_spec

    methods = None
    if args.methods is not None:
        methods = "all" if args.methods == "all" else [m for m in args.methods.split(",") if m]
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x]
        except ValueError:
            raise HarnessError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    spec = load_spec(args.spec, args.overrides, methods=methods, trials=args.trials, storage=args.storage,
                     seeds=seeds)
    try:
        fronts = run_sweep(spec, workers=args.workers, progress=not args.quiet)
    except RuntimeError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 1
    print(f"sweep {spec.name!r} finished; Pareto sets are on each method's parent run. Next: harness ui")
    for m, front in fronts.items():
        pts = ", ".join(f"lr={f['params'].get('train.lr', float('nan')):.1e}: gain {f['target_gain']:+.1f} "
                        f"drop {f['nontarget_drop']:+.1f}" for f in front)
        print(f"  {m:14s} {pts}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on 127.0.0.1 against the harness's tracking store."""
    from harness.store import tracking_uri
    uri = tracking_uri()
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(args.port)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="harness", **_fmt(
        "Measure what post-training methods cost in forgetting: train on a target task, "
        "evaluate gain there and drop elsewhere, log everything to MLflow.", EPILOG))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="show worlds, tasks and methods", **_fmt("Show worlds, tasks and methods."))
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="train and evaluate one run", **_fmt(
        "Train one method on a world from its base model, evaluate every train.eval_every steps "
        "(target gain, non-target drop with 95% CIs, PLD drift, KL to base, cost), and log one MLflow run.\n"
        "Settings: defaults < world preset < --preset YAML < key=value overrides.",
        textwrap.dedent("""\
        examples:
          harness run --method sft
          harness run --world micro --method sft train.max_steps=20
          harness run --method sft world.target=rev world.teacher_style=mild train.lr=3e-4
          harness run --method sft --help-config       every setting, its default and meaning""")))
    s.add_argument("--method", default=None, help="method registry key (default: sft; see `harness list`)")
    s.add_argument("--world", default=None, help="world preset: toy (default) or micro")
    s.add_argument("--preset", default=None, help="YAML file of settings (sections world/train/eval/tracking/<method>)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--help-config", action="store_true", help="list every setting with its default and exit")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. train.lr=1e-4 sft.kl_beta=0.05")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="Optuna sweep over learning rates for many methods", **_fmt(
        "One Optuna study per method over its declared search space (learning rate by default), every "
        "(trial, seed) a nested MLflow run under a parent run per method. Re-running the same command resumes: "
        "finished trials are kept, trials of a killed process are retried, nothing is computed twice.\n"
        "Spec: sweeps/default.yaml < --spec FILE < key=value < flags.",
        textwrap.dedent("""\
        examples:
          harness sweep --methods all                      the main job on the toy world
          harness sweep --methods sft,grpo --trials 6 --workers 2
          harness sweep world=micro trials=2 name=smoke
          harness sweep --storage postgresql://u:pw@db/optuna --workers 4   (many machines: same command)""")))
    s.add_argument("--methods", default=None, help="all, or a comma-separated list (default: the spec's)")
    s.add_argument("--spec", default=None, help="sweep spec YAML (default: sweeps/default.yaml)")
    s.add_argument("--trials", type=int, default=None, help="trials per method")
    s.add_argument("--workers", type=int, default=1, help="worker processes on this machine (torch threads split)")
    s.add_argument("--storage", default=None, help="Optuna storage URL (default: journal file optuna-<name>.log)")
    s.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds run by every trial")
    s.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="spec fields, e.g. world=micro trials=2")
    s.set_defaults(fn=cmd_sweep)

    from reports.cli import add_report_parser
    add_report_parser(sub)

    s = sub.add_parser("ui", help="browse runs in the MLflow UI (127.0.0.1)", **_fmt(
        "Start the MLflow UI bound to 127.0.0.1 on the harness's store (MLFLOW_TRACKING_URI or ./mlflow.db)."))
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harness` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"harness: training diverged: {e} (the run is logged as FAILED; lower train.lr)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted; the run is logged as KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
