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


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on 127.0.0.1 against the harness's tracking store."""
    from harness.tracking import tracking_uri
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
