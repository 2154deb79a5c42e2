"""`harness`: a thin command line; each subcommand parses and calls a typed function."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from harness.cliargs import take_settings
from harness.cliparsers import (RUN_SETTINGS, SWEEP_SETTINGS, UI_SETTINGS, add_fetch_parser, add_list_parser,
                                add_run_parser, add_sweep_parser, add_ui_parser, main_parser)
from harness import metric_names as N
from harness.errors import HarnessError, TrainingDiverged

if TYPE_CHECKING:
    from pydantic import BaseModel


def config_help(model: type[BaseModel], prefix: str = "", world: type[BaseModel] | None = None
                ) -> list[tuple[str, str, str]]:
    """(key, default, doc) rows for every field, recursing into sub-sections and lists of them
    (`harness run --help-config`); `world` is the world config class of the kind in use (toy or real)."""
    import typing

    from pydantic import BaseModel
    rows = []
    for name, f in model.model_fields.items():
        if name == "method_args":  # the method's own keys are listed after the run's, as `<method>.<field>`
            continue
        ann = world if name == "world" and world is not None else f.annotation
        args = typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += config_help(ann, f"{prefix}{name}.")
        elif typing.get_origin(ann) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            rows.append((f"{prefix}{name}", "[]", (f.description or "").strip()))  # one entry per list item:
            rows += config_help(args[0], f"{prefix}{name}[].")
        else:
            default = f.default_factory() if f.default_factory is not None else f.default
            rows.append((f"{prefix}{name}", "(required)" if f.is_required() else repr(default),
                         (f.description or "").strip()))
    return rows


def help_config(args: argparse.Namespace, over: dict) -> int:
    """Print every setting of the run, with the world's keys of the kind its settings select (toy or real)."""
    from harness.config import RunConfig, resolve_config
    from harness.method import get_method

    try:
        world = type(resolve_config(world=args.world, method=args.method, preset=args.preset, overrides=over).world)
    except HarnessError:  # settings that do not resolve still get the help, for the default (toy) world
        from harness.world import DEFAULT_KIND, world_class
        world = world_class(DEFAULT_KIND).Config
    print(f"settings of `harness run` (world kind `{world.model_fields['kind'].default}`; "
          f"defaults before any preset):")
    cls = get_method(args.method or "sft")
    for key, default, doc in config_help(RunConfig, world=world) + config_help(cls.Config, f"{cls.name}."):
        print(f"  {key:32s} {default:14s} {doc}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print worlds, tasks and methods."""
    from benchmarks.tasks import FAMILIES
    from harness.config import world_presets
    from harness.method import get_method, method_names
    from harness.world import WORLD_KINDS, world_class

    print("worlds (presets in benchmarks/presets; `harness run --world NAME --dry-run` checks one):")
    for kind in WORLD_KINDS:
        for name, preset in world_presets(kind).items():
            print(f"  {world_class(kind).Config(**{**preset.get('world', {}), 'name': name}).summary()}")
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
    from harness.settings_input import deep_merge, parse_overrides
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
    from harness.config import resolve_config
    from harness.method import get_method

    over = _run_overrides(args)
    if args.help_config:
        return help_config(args, over)
    cfg = resolve_config(world=args.world, method=args.method, preset=args.preset, overrides=over)
    if args.dry_run:
        from benchmarks.staging import dry_run
        return dry_run(cfg)
    from harness.parallel import Parallel
    from harness.run import run
    final = run(cfg, progress=not args.quiet)
    if not Parallel.of().main:  # under `accelerate launch` rank 0 reports for every rank
        return 0
    keys = [*N.GAIN_DROP_CIS, N.PLD_DRIFT, N.KL_TO_BASE, N.COST_WALL_S]
    print(f"{cfg.method} on {cfg.world.name}/{cfg.world.target_task}: "
          + ", ".join(f"{k}={final[k]:.2f}" for k in keys if k in final))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Stage a world's model, datasets and nltk data into the local caches (needs network)."""
    from benchmarks.staging import fetch
    from harness.config import resolve_config

    if args.world is None and args.preset is None:
        raise HarnessError("`harness fetch` needs --world NAME (see `harness list`) or --preset FILE with a real world")
    cfg = resolve_config(world=args.world, preset=args.preset, overrides=list(args.overrides))
    missing = [r for r in fetch(cfg.world, rebuild_base=args.rebuild_base) if r.present is False]
    if missing:  # what no download can fix: a local file or folder the preset names
        first = missing[0]
        raise HarnessError(f"{first.what} is missing after fetching: {first.problem or first.where}"
                           + (f" ({len(missing) - 1} more MISSING above)" if len(missing) > 1 else ""))
    return 0


def _sweep_inputs(args: argparse.Namespace) -> tuple[str | None, list[str], dict]:
    """(spec file, spec key=value tokens, explicit spec fields) from a sweep's flags and key=value settings."""
    from harness.config import RunConfig
    from harness.settings_input import deep_merge, load_yaml_mapping, parse_overrides
    from harness.method import method_names

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
        pts = ", ".join(f"lr={f['params'].get('train.lr', float('nan')):.1e}: gain {f[N.TARGET_GAIN]:+.1f} "
                        f"drop {f[N.NONTARGET_DROP]:+.1f}" for f in front)
        print(f"  {m:14s} {pts}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on 127.0.0.1 and print (or open) the newest sweep's runs table."""
    from harness.ui import serve
    take_settings(args, UI_SETTINGS, args.overrides, strict=True)
    return serve(args.experiment, port=args.port or 5000, open_browser=not args.no_browser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = main_parser()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_list_parser(sub).set_defaults(fn=cmd_list)
    add_run_parser(sub).set_defaults(fn=cmd_run)
    add_sweep_parser(sub).set_defaults(fn=cmd_sweep)
    add_fetch_parser(sub).set_defaults(fn=cmd_fetch)

    from reports.cli import add_report_parser
    add_report_parser(sub)

    add_ui_parser(sub).set_defaults(fn=cmd_ui)
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
    except BrokenPipeError:  # `harness list | head`: the reader has gone, so the rest of the output has nowhere to go
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        return 0


if __name__ == "__main__":
    sys.exit(main())
