"""`harness report`: the subcommand's parser and handler (harness/cli.py calls `add_report_parser(sub)`)."""
from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

from harness.cliargs import Setting, add_settings, as_bool, as_list, as_str, spellings, take_settings
from harness.errors import HarnessError

REPORT_SETTINGS = [Setting("experiment", ("experiment", "name"), as_str), Setting("out", ("out",), as_str),
                   Setting("no_log", ("no_log",), as_bool), Setting("mixed_samplers", ("mixed_samplers",), as_bool)]


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report of one experiment from MLflow and print where it went."""
    from harness.store import open_store
    from reports.build import build_report

    take_settings(args, REPORT_SETTINGS, getattr(args, "overrides", []), strict=True)
    if args.out:
        check_out_dir(Path(args.out))  # before anything is read or logged: a bad --out leaves the store as it was
    client = open_store()  # a report reads the store: it must never create (or migrate) one
    if args.experiment and "," in args.experiment:
        return cmd_crossworld(args, client)
    t0 = time.perf_counter()
    files = build_report(args.experiment, Path(args.out) if args.out else None, log_artifacts=not args.no_log,
                         client=client, mixed_samplers=bool(args.mixed_samplers))
    seconds = time.perf_counter() - t0
    page = files["report.html"]
    out = page.parent
    print(f"report: {len(files)} files in {out.resolve()} ({seconds:.1f} s)")
    print(f"  figures: {', '.join(sorted(n for n in files if n.endswith('.png')))} (+ .pdf)")
    print(f"  summary: {files['summary.md'].resolve()}")
    print(f"  page:    {page.resolve()}")
    if not args.no_log:
        print("  also logged under report/ on every parent run of the experiment (see `harness ui`)")
    print_claims(files)
    return 0


def check_out_dir(out: Path) -> None:
    """One-line HarnessError unless `out` is (or can be made) a writable folder; creates nothing."""
    where = out.expanduser().absolute()
    if where.exists() and not where.is_dir():
        raise HarnessError(f"--out {str(out)!r} is a file, not a folder; give a folder (it is created if missing)")
    parent = where
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HarnessError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is a file; give another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {str(out)!r} is not writable (no write permission on {str(parent)!r}); "
                           "give a folder you can write")


def cmd_crossworld(args: argparse.Namespace, client) -> int:
    """`--experiment a,b,c`: the table of the core effect across the named sweeps (one row each)."""
    from reports.build import slug
    from reports.crossworld import write_crossworld
    from reports.frame import load

    try:
        names = as_list(args.experiment)
    except ValueError as e:
        raise HarnessError(f"`--experiment {args.experiment}`: experiment {e}") from None
    frames = [load(n, client) for n in names]
    out = Path(args.out) if args.out else Path("reports") / "out" / ("crossworld-" + "+".join(map(slug, names)))
    files = write_crossworld(frames, out)
    print(f"cross-world table of {len(names)} sweeps: {', '.join(str(p.resolve()) for p in files.values())}")
    print(files["crossworld.md"].read_text())
    return 0


def print_claims(files: dict[str, Path]) -> None:
    """The claims table (the off-policy dial is its last row), one line each, on the terminal."""
    import pandas as pd

    claims = pd.read_csv(files["claims.csv"])
    if len(claims):
        print("\nclaims (details and intervals: summary.md, claims.csv):")
        for _, c in claims.iterrows():
            print(f"  {c['verdict']:<15} {c['claim']} [{c['source']}]")


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register `harness report` on the CLI's subparsers; returns the new parser."""
    s = subparsers.add_parser(
        "report", help="figures and tables of a sweep, rebuilt from MLflow",
        description="Rebuild, from MLflow runs alone (no training, no Optuna storage), the gain-drop Pareto "
                    "figure, fronts against learning rate and compute, PLD drift curves, forgetting predictors, "
                    "per-task drops, drop at matched gain and per-method tables: PNG + PDF, CSV, a Markdown "
                    "summary and one self-contained HTML page, also logged under report/ on the sweep's parent runs.",
        epilog=textwrap.dedent("""\
        examples:
          harness report                                 newest experiment with runs -> reports/out/<experiment>/
          harness report --experiment default --out /tmp/report   (= experiment=default out=/tmp/report)
          harness report --experiment default,robust-target-add,robust-base-seed1   the core effect across worlds
          MLFLOW_TRACKING_URI=sqlite:////data/mlflow.db harness report --no-log"""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(s, REPORT_SETTINGS, {
        "experiment": "MLflow experiment (= sweep name); default: the most recently updated one with runs; "
                      "several, comma-separated: one table of the core effect across them (crossworld.csv/.md/.html)",
        "out": "output directory (default: reports/out/<experiment>/)",
        "no_log": "do not log the files as artifacts of the parent runs",
        "mixed_samplers": "compare runs whose data were sampled by different backends (tag `sampler`: hf, vllm); "
                          "refused otherwise, since vLLM samples a bf16 copy of the policy"}, {"out": "DIR"})
    s.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"{spellings(REPORT_SETTINGS)} (same as the flags)")
    s.set_defaults(fn=cmd_report)
    return s
