"""`harness`: a thin command line; each subcommand parses and calls a typed function."""
from __future__ import annotations

import argparse
import sys
import textwrap

from harness.cliargs import (Setting, add_settings, as_bool, as_int, as_int_list, as_methods, as_str, spellings,
                             take_settings)
from harness.errors import HarnessError, TrainingDiverged

EPILOG = """\
examples:
  harness list                                   worlds, tasks and methods
  harness run --method sft                       SFT on the toy world, logged to MLflow
  harness run --world micro --method sft         the same on the tiny test world (seconds)
  harness run --method sft train.lr=3e-4 world.teacher_style=mild
  harness run --method sft --preset my.yaml sft.kl_beta=0.05
  harness sweep --methods all                    Optuna sweep over learning rates, every method
  harness sweep --world micro trials=2           flags and key=value are two spellings of one setting
  harness report                                 Pareto plots and tables rebuilt from MLflow
  harness ui                                     the newest sweep's runs in MLflow (http://127.0.0.1:5000)
"""


def _single_seed(v) -> int:
    """`harness run` trains one seed."""
    seeds = as_int_list(v)
    if len(seeds) != 1:
        raise ValueError("takes one seed here (`harness sweep seeds=0,1,2` runs several)")
    return seeds[0]


RUN_SETTINGS = [Setting("world", ("world",), as_str), Setting("method", ("method",), as_str),
                Setting("preset", ("preset",), as_str), Setting("experiment", ("experiment",), as_str),
                Setting("seed", ("seed", "seeds"), _single_seed), Setting("quiet", ("quiet",), as_bool)]
SWEEP_SETTINGS = [Setting("world", ("world",), as_str), Setting("methods", ("methods", "method"), as_methods),
                  Setting("name", ("name", "experiment"), as_str), Setting("trials", ("trials",), as_int),
                  Setting("seeds", ("seeds", "seed"), as_int_list), Setting("storage", ("storage",), as_str),
                  Setting("workers", ("workers",), as_int), Setting("spec", ("spec",), as_str),
                  Setting("preset", ("preset",), as_str), Setting("quiet", ("quiet",), as_bool)]
UI_SETTINGS = [Setting("experiment", ("experiment", "name"), as_str), Setting("port", ("port",), as_int),
               Setting("no_browser", ("no_browser",), as_bool)]


def _fmt(desc: str, epilog: str = "") -> dict:
    return {"description": desc, "epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def cmd_list(args: argparse.Namespace) -> int:
    """Print worlds, tasks and methods."""
    from benchmarks.tasks import FAMILIES
    from benchmarks.world import WORLD_PRESETS, WorldConfig
    from methods.base import get_method, method_names

    from benchmarks.real import preset_lines

    print("worlds:")
    for name, preset in WORLD_PRESETS.items():
        w = WorldConfig(name=name, **preset.get("world", {}))
        print(f"  {name:8s} target={w.target}, tasks={','.join(w.tasks)}, teacher_style={w.teacher_style}")
    print("\nreal-world presets (benchmarks/presets; `harness run --world NAME --dry-run` checks one):")
    print("\n".join(preset_lines()))
    print("\ntasks (any can be the target: world.target=<task>):")
    for name, fam in FAMILIES.items():
        print(f"  {name:8s} {fam.description}   e.g. {fam.prompt('12345' if name != 'count' else 'aabcadae')}")
    print("\nmethods:")
    for name in method_names():
        cls = get_method(name)
        print(f"  {name:14s} {cls.description}\n  {'':14s} paper: {cls.paper}")
    return 0


def _run_overrides(args: argparse.Namespace) -> dict:
    """The run's key=value settings as a nested dict, with --experiment and --seed folded in."""
    from harness.config import deep_merge, parse_overrides
    rest = take_settings(args, RUN_SETTINGS, args.overrides)
    over = parse_overrides(rest)
    for dest, (section, key) in {"experiment": ("tracking", "experiment"), "seed": ("train", "seed")}.items():
        value = getattr(args, dest)
        if value is None:
            continue
        already = over.get(section, {}).get(key) if isinstance(over.get(section), dict) else None
        if already is not None and already != value:
            raise HarnessError(f"`{section}.{key}={already}` and `{dest}={value}` disagree; give the setting once")
        over = deep_merge(over, {section: {key: value}})
    return over


def cmd_run(args: argparse.Namespace) -> int:
    """Resolve the config and train one run."""
    from harness.config import config_help, resolve_config
    from methods.base import get_method

    over = _run_overrides(args)
    if args.help_config:
        from harness.config import RunConfig
        rows = config_help(RunConfig)
        cls = get_method(args.method or "sft")
        rows += config_help(cls.Config, f"{cls.name}.")
        for key, default, doc in rows:
            print(f"  {key:32s} {default:14s} {doc}")
        return 0
    cfg, mcfg = resolve_config(world=args.world, method=args.method, preset=args.preset, overrides=over)
    if args.dry_run:
        from benchmarks.staging import dry_run
        return dry_run(cfg)
    from harness import distributed
    from harness.run import run
    final = run(cfg, mcfg, progress=not args.quiet)
    if not distributed.is_main():  # under `accelerate launch` rank 0 reports for every rank
        return 0
    keys = ["target_gain", "target_gain_lo", "target_gain_hi", "nontarget_drop", "nontarget_drop_lo",
            "nontarget_drop_hi", "pld_drift", "kl_to_base", "cost/wall_s"]
    print(f"{cfg.method} on {cfg.world.name}/{cfg.world.target_task}: "
          + ", ".join(f"{k}={final[k]:.2f}" for k in keys if k in final))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Stage a world's model, datasets and nltk data into the local caches (needs network)."""
    from benchmarks.staging import fetch
    from harness.config import resolve_config

    if args.world is None and args.preset is None:
        raise HarnessError("`harness fetch` needs --world NAME (see `harness list`) or --preset FILE with a real world")
    cfg, _ = resolve_config(world=args.world, preset=args.preset, overrides=list(args.overrides))
    return 0 if all(r.present is not False for r in fetch(cfg.world)) else 2


def _sweep_inputs(args: argparse.Namespace) -> tuple[str | None, list[str], dict]:
    """(spec file, spec key=value tokens, explicit spec fields) from a sweep's flags and key=value settings."""
    from harness.config import RunConfig, deep_merge, load_yaml_mapping, parse_overrides
    from methods.base import method_names

    rest = take_settings(args, SWEEP_SETTINGS, args.overrides)
    # A run setting (train.max_steps=20, world.target=rev, sft.kl_beta=0.05) means what it means for
    # `harness run`: it applies to every trial, i.e. it goes into the spec's `overrides`.
    run_sections = set(RunConfig.model_fields) | set(method_names())
    spec_tokens, run_tokens = [], []
    for tok in rest:
        key = tok.partition("=")[0]
        head = key.split(".", 1)[0]
        (run_tokens if "." in key and head in run_sections else spec_tokens).append(tok)
    fields = {k: getattr(args, k) for k in ("world", "name", "methods", "trials", "seeds", "storage")}
    run_over = load_yaml_mapping(args.preset, "preset file") if args.preset else {}
    run_over = deep_merge(run_over, parse_overrides(run_tokens))
    if run_over:
        fields["overrides"] = run_over  # merged over the spec's own `overrides` by load_spec
    return args.spec, spec_tokens, fields


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run or resume a sweep."""
    from sweeps.driver import run_sweep
    from sweeps.spec import load_spec

    spec_path, tokens, fields = _sweep_inputs(args)
    spec = load_spec(spec_path, tokens, **fields)
    try:
        fronts = run_sweep(spec, workers=args.workers or 1, progress=not args.quiet, spec_path=spec_path)
    except RuntimeError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 1
    print(f"sweep {spec.name!r} finished; Pareto sets are on each method's parent run. Next: harness report, "
          "then harness ui")
    for m, front in fronts.items():
        pts = ", ".join(f"lr={f['params'].get('train.lr', float('nan')):.1e}: gain {f['target_gain']:+.1f} "
                        f"drop {f['nontarget_drop']:+.1f}" for f in front)
        print(f"  {m:14s} {pts}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on 127.0.0.1 and print (or open) the newest sweep's runs table."""
    from harness.ui import serve
    take_settings(args, UI_SETTINGS, args.overrides, strict=True)
    return serve(args.experiment, port=args.port or 5000, open_browser=not args.no_browser)


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
    add_settings(s, RUN_SETTINGS, {
        "world": "world preset: toy (default) or micro", "method": "method registry key (default: sft; see `harness "
        "list`)", "preset": "YAML file of settings (sections world/train/eval/tracking/<method>)",
        "experiment": "MLflow experiment (= tracking.experiment; default: harness)",
        "seed": "fine-tuning seed (= train.seed)", "quiet": "no progress bars"}, {"preset": "FILE"})
    s.add_argument("--help-config", action="store_true", help="list every setting with its default and exit")
    s.add_argument("--dry-run", action="store_true", help=(
        "print the resolved plan and the files it needs (present or not), load the world offline, and exit"))
    s.add_argument("overrides", nargs="*", metavar="key=value", help=(
        f"settings, e.g. train.lr=1e-4 sft.kl_beta=0.05; also {spellings(RUN_SETTINGS)} (same as the flags)"))
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="Optuna sweep over learning rates for many methods", **_fmt(
        "One Optuna study per method over its declared search space (learning rate by default), every "
        "(trial, seed) a nested MLflow run under a parent run per method. Re-running the same command resumes: "
        "finished trials are kept, trials of a killed process are retried, nothing is computed twice.\n"
        "Spec: sweeps/default.yaml < --spec FILE < key=value settings; a flag is the same setting as its "
        "key=value (--world micro = world=micro), and both given must agree. In a terminal a live display shows "
        "progress; in a log (file, CI, nohup), one line per finished run and a summary line every minute.",
        textwrap.dedent("""\
        examples:
          harness sweep --methods all                      the main job on the toy world
          harness sweep --methods sft,grpo --trials 6 --workers 2
          harness sweep --world micro --trials 2 --name smoke   (= world=micro trials=2 name=smoke)
          harness sweep world=micro train.max_steps=20     run settings apply to every trial
          harness sweep --storage postgresql://u:pw@db/optuna --workers 4   (many machines: same command)""")))
    add_settings(s, SWEEP_SETTINGS, {
        "world": "world preset (default: the spec's, toy)",
        "methods": "all, or a comma-separated list of methods and variants (default: the spec's)",
        "name": "sweep name = MLflow experiment = Optuna study prefix (default: the spec's)",
        "trials": "trials per method", "seeds": "comma-separated fine-tuning seeds run by every trial",
        "storage": "Optuna storage URL (default: journal file optuna-<name>.log)",
        "workers": "worker processes on this machine (torch threads split; default 1)",
        "spec": "sweep spec YAML (default: sweeps/default.yaml)",
        "preset": "YAML file of run settings for every trial (as `harness run --preset`)",
        "quiet": "no live display: one line per finished run and a summary line now and then"},
        {"spec": "FILE", "preset": "FILE", "methods": "LIST", "seeds": "LIST", "storage": "URL"})
    s.add_argument("overrides", nargs="*", metavar="key=value", help=(
        "spec fields (world=micro trials=2 objective=..., see sweeps/default.yaml) or run settings for every "
        f"trial (train.max_steps=20); also {spellings(SWEEP_SETTINGS)} (same as the flags)"))
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("fetch", help="stage a real world's model and data for offline runs", **_fmt(
        "Download what a real-world preset needs into the local caches: the base model at its revision (Hugging "
        "Face hub cache), the lm-eval datasets not given as local files (datasets cache) and nltk's punkt_tab for "
        "IFEval. Run it on a machine with network; afterwards `harness run --world NAME` needs none.",
        textwrap.dedent("""\
        examples:
          harness fetch --world rbd-qwen2.5-1.5b-ifeval
          harness fetch --world tms-qwen2.5-1.5b-math world.revision=<commit>""")))
    s.add_argument("--world", help="real-world preset (see `harness list`); or --preset FILE defining the world")
    s.add_argument("--preset", metavar="FILE", help="YAML file of settings layered over the world preset")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. world.revision=<commit>")
    s.set_defaults(fn=cmd_fetch)

    from reports.cli import add_report_parser
    add_report_parser(sub)

    s = sub.add_parser("ui", help="browse runs in the MLflow UI (127.0.0.1)", **_fmt(
        "Serve the MLflow UI on 127.0.0.1 for the harness's store (MLFLOW_TRACKING_URI or ./mlflow.db) and print "
        "the URL of the newest sweep's runs table (parent run per method, trials nested); opens it where a "
        "browser is available. Reads the store only: it never creates one.",
        textwrap.dedent("""\
        examples:
          harness ui
          harness ui --experiment default --port 5001 --no-browser""")))
    add_settings(s, UI_SETTINGS, {"experiment": "sweep (MLflow experiment) to show (default: the newest sweep)",
                                  "port": "port on 127.0.0.1 (default 5000)",
                                  "no_browser": "only print the URL"})
    s.add_argument("overrides", nargs="*", metavar="key=value", help=f"{spellings(UI_SETTINGS)} (same as the flags)")
    s.set_defaults(fn=cmd_ui)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; key=value settings may sit before, between or after the flags."""
    args, extra = build_parser().parse_known_args(argv)  # argparse leaves key=value after a flag over
    unknown_flags = [x for x in extra if x.startswith("-")]
    if unknown_flags:
        raise HarnessError(f"`harness {args.command}` has no option {unknown_flags[0]}; see "
                           f"`harness {args.command} --help`")
    if extra:
        if not hasattr(args, "overrides"):
            raise HarnessError(f"`harness {args.command}` takes no {extra[0]!r}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harness` command."""
    try:
        args = parse_args(argv)
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
