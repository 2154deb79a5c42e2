"""The parsers of `harness`'s own subcommands (list, run, sweep, fetch, ui): flags, help texts and examples.

harness/cli.py binds each to its handler; `harness report` registers its own parser (reports/cli.py).
"""
from __future__ import annotations

import argparse
import textwrap

from harness.cliargs import (Setting, add_settings, as_bool, as_count, as_int_list, as_methods, as_port, as_str,
                             spellings)

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
                  Setting("name", ("name", "experiment"), as_str), Setting("trials", ("trials",), as_count),
                  Setting("seeds", ("seeds", "seed"), as_int_list), Setting("storage", ("storage",), as_str),
                  Setting("workers", ("workers",), as_count), Setting("spec", ("spec",), as_str),
                  Setting("preset", ("preset",), as_str), Setting("quiet", ("quiet",), as_bool)]
UI_SETTINGS = [Setting("experiment", ("experiment", "name"), as_str), Setting("port", ("port",), as_port),
               Setting("no_browser", ("no_browser",), as_bool)]


def _fmt(desc: str, epilog: str = "") -> dict:
    return {"description": desc, "epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def main_parser() -> argparse.ArgumentParser:
    """The top-level `harness` parser, before any subcommand is added."""
    return argparse.ArgumentParser(prog="harness", **_fmt(
        "Measure what post-training methods cost in forgetting: train on a target task, "
        "evaluate gain there and drop elsewhere, log everything to MLflow.", EPILOG))


def add_list_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `harness list` on the top-level parser's subparsers; returns the new parser."""
    return subparsers.add_parser("list", help="show worlds, tasks and methods",
                                 **_fmt("Show worlds, tasks and methods."))


def add_run_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `harness run`; returns the new parser."""
    s = subparsers.add_parser("run", help="train and evaluate one run", **_fmt(
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
        "world": "world preset: toy (default), micro, or a shipped real world such as smollm2-135m-arith "
                 "(`harness list` names them all)",
        "method": "method registry key (default: sft; see `harness list`)",
        "preset": "YAML file of settings (sections world/train/eval/tracking/<method>)",
        "experiment": "MLflow experiment (= tracking.experiment; default: harness)",
        "seed": "fine-tuning seed (= train.seed)", "quiet": "no progress bars"}, {"preset": "FILE"})
    s.add_argument("--help-config", action="store_true", help="list every setting with its default and exit")
    s.add_argument("--dry-run", action="store_true", help=(
        "print the resolved plan and the files it needs (present or not), load the world offline, and exit"))
    s.add_argument("overrides", nargs="*", metavar="key=value", help=(
        f"settings, e.g. train.lr=1e-4 sft.kl_beta=0.05; also {spellings(RUN_SETTINGS)} (same as the flags)"))
    return s


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `harness sweep`; returns the new parser."""
    s = subparsers.add_parser("sweep", help="Optuna sweep over learning rates for many methods", **_fmt(
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
    return s


def add_fetch_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `harness fetch`; returns the new parser."""
    s = subparsers.add_parser("fetch", help="stage a world's model and data for offline runs", **_fmt(
        "Stage what a world needs into the local caches. A real-world preset: the base model at its revision (Hugging "
        "Face hub cache), the lm-eval datasets not given as local files (datasets cache) and nltk's punkt_tab for "
        "IFEval; run it on a machine with network, afterwards `harness run --world NAME` needs none. A toy world: "
        "its base, the project's shipped copy when one matches the world's config, else pretrained here.",
        textwrap.dedent("""\
        examples:
          harness fetch --world rbd-qwen2.5-1.5b-ifeval
          harness fetch --world tms-qwen2.5-1.5b-math world.revision=<commit>
          harness fetch --world toy --rebuild-base""")))
    s.add_argument("--world", help="real-world preset (see `harness list`); or --preset FILE defining the world")
    s.add_argument("--preset", metavar="FILE", help="YAML file of settings layered over the world preset")
    s.add_argument("--rebuild-base", action="store_true",
                   help="toy worlds: pretrain the base on this machine instead of installing the shipped one "
                        "(replaces the cached copy)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. world.revision=<commit>")
    return s


def add_ui_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `harness ui`; returns the new parser."""
    s = subparsers.add_parser("ui", help="browse runs in the MLflow UI (127.0.0.1)", **_fmt(
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
    return s
