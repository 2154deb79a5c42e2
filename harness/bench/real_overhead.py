"""Time one tiny real-world run through the real CLI, cold and warm, and how much of it is not training or evaluation.

    python -m harness.bench.real_overhead [--source DIR ...] [--repeats 2] [--workdir DIR]

Builds a tiny real world offline (harness.tiny: a 2-layer Qwen2 with a chat template, local gsm8k and arc_easy
files), then for each source tree runs `harness run --preset <it> --method sft` in fresh processes:
- cold: an empty harness cache and a fresh MLflow store (lm-eval tasks built, base scored, schema created);
- warm: the same cache and store again (`--repeats` times; the median is shown);
- store: the warm cache and a fresh MLflow store (a new project folder: the schema is created again);
- again: a run after another in the same process, as in a sweep worker (imports and loaded tasks reused);
- imports: a fresh process that only imports the third-party modules a warm run loaded, in the same order and
  does nothing else: the floor a fresh process pays before the harness does anything (its "outside" is its wall).
Each run's wall time is the process's; training, sampling and evaluation seconds are the run's own `cost/`
metrics read back from MLflow, so "outside" = wall - train - gen - eval is imports, world building, model
loading, tracking and shutdown. Pass the old checkout as another `--source` to measure before and after in one go.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import metric_names as N

STEPS = 4


def _world(root: Path) -> Path:
    """The tiny real world's preset file (model, data and nltk data built under root once)."""
    import yaml

    from harness.tiny import build_tiny_model, write_task_data
    preset = root / "tiny-real.yaml"
    if preset.exists():
        return preset
    model = build_tiny_model(root / "qwen2", "qwen2")
    data = write_task_data(root / "data")
    preset.write_text(yaml.safe_dump({
        "world": {"kind": "real", "name": "tiny-real", "base_model": str(model), "chat_template": True,
                  "target": {"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                             "metric": "exact_match", "max_gen_toks": 8},
                  "retention": [{"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"}],
                  "max_new_tokens": 8, "n_train": 12, "n_heldout": 4, "n_val": 4, "n_eval": 6,
                  "n_val_nontarget": 4, "n_eval_nontarget": 6},
        "train": {"max_steps": STEPS, "batch_size": 4, "micro_batch_size": 2, "eval_every": STEPS, "lr": 1e-3,
                  "threads": 1},
        "eval": {"batch_size": 16, "bootstrap_iters": 0, "examples_logged": 2},
        "tracking": {"experiment": "overhead"}}))
    return preset


def _env(source: Path, cache: Path, store: Path) -> dict[str, str]:
    """The child process's environment: this source tree, its own cache and MLflow store, one thread."""
    return {**os.environ, "PYTHONPATH": str(source), "HARNESS_CACHE": str(cache),
            "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}


def _one(source: Path, preset: Path, cache: Path, store: Path, python: str) -> dict[str, float]:
    """One `harness run` in a fresh process: wall seconds and the run's train/gen/eval seconds."""
    t0 = time.perf_counter()
    out = subprocess.run([python, "-m", "harness.cli", "run", "--preset", str(preset), "--method", "sft", "--quiet"],
                         cwd=store, env=_env(source, cache, store), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"harness run failed in {source}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return {"wall": wall, **_costs(store / "mlflow.db", python)}


def _child_json(code: str, tag: str, what: str, source: Path, preset: Path, cache: Path, store: Path,
                python: str) -> Any:
    """Run `code` (given the preset as argv[1]) in a fresh process and parse the JSON it prints after `tag `."""
    out = subprocess.run([python, "-c", code, str(preset)], cwd=store, env=_env(source, cache, store),
                         capture_output=True, text=True)
    found = [json.loads(line[len(tag) + 1:]) for line in out.stdout.splitlines() if line.startswith(tag + " ")]
    if out.returncode != 0 or not found:
        raise SystemExit(f"{what} failed in {source}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return found[0]


def _in_worker(source: Path, preset: Path, cache: Path, store: Path, python: str, n: int) -> list[dict[str, float]]:
    """`n` runs one after another in ONE process, as a sweep worker runs them: wall and cost of each but the
    first (which pays the imports)."""
    code = ("import json,sys,time;from harness.cli import main;out=[]\n"
            f"for _ in range({n + 1}):\n"
            "    t=time.perf_counter();assert main(['run','--preset',sys.argv[1],'--method','sft','--quiet'])==0;"
            "out.append(time.perf_counter()-t)\n"
            "print('WALLS',json.dumps(out[1:]))")
    walls = _child_json(code, "WALLS", "in-process runs", source, preset, cache, store, python)
    cost = _costs(store / "mlflow.db", python)  # the last run's; every run is the same
    return [{"wall": w, **cost} for w in walls]


OWN_PACKAGES = ("harness", "methods", "benchmarks", "sweeps", "reports", "__main__")


def _third_party_modules(source: Path, preset: Path, cache: Path, store: Path, python: str) -> list[str]:
    """The modules outside this project that one warm `harness run` loads, in the order it loads them."""
    code = ("import json,sys;before=set(sys.modules);from harness.cli import main\n"
            "assert main(['run','--preset',sys.argv[1],'--method','sft','--quiet'])==0\n"
            "print('MODULES',json.dumps([m for m in sys.modules if m not in before]))")
    found = _child_json(code, "MODULES", "listing a run's modules", source, preset, cache, store, python)
    return [m for m in found if m.split(".")[0] not in OWN_PACKAGES]


def _imports_only(modules: list[str], python: str) -> dict[str, float]:
    """Wall seconds of a fresh process that imports `modules` (those that import on their own) and exits."""
    code = ("import importlib,json,sys\n"
            "for m in json.loads(sys.stdin.read()):\n"
            "    try: importlib.import_module(m)\n"
            "    except Exception: pass\n")  # a name a package registered itself (an alias) may not import alone
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], input=json.dumps(modules), capture_output=True, text=True, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"wall": time.perf_counter() - t0, "train": 0.0, "eval": 0.0}


def _costs(db: Path, python: str) -> dict[str, float]:
    """The newest finished run's cost/train_s, cost/gen_s and cost/eval_s, read in a separate process."""
    keys = (N.COST_TRAIN_S, N.COST_GEN_S, N.COST_EVAL_S)
    code = ("import json,sqlite3,sys;c=sqlite3.connect(sys.argv[1]);"
            "r=c.execute(\"select run_uuid from runs where status='FINISHED' order by end_time desc limit 1\").fetchone()[0];"
            "print(json.dumps({k:v for k,v in c.execute('select key,value from latest_metrics where run_uuid=?',(r,))"
            f" if k in {keys!r}}}))")
    got = json.loads(subprocess.run([python, "-c", code, str(db)], capture_output=True, text=True,
                                    check=True).stdout)
    return {"train": got.get(N.COST_TRAIN_S, 0.0) + got.get(N.COST_GEN_S, 0.0), "eval": got.get(N.COST_EVAL_S, 0.0)}


def _row(label: str, runs: list[dict[str, float]]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    outside = med["wall"] - med["train"] - med["eval"]
    return f"  {label:7s} wall {med['wall']:6.1f} s   train+gen {med['train']:5.1f} s   eval {med['eval']:5.1f} s   " \
           f"outside {outside:5.1f} s"


def main(argv: list[str] | None = None) -> None:
    """Build the tiny world, time cold and warm runs per source tree and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", type=Path,
                    help="a source tree to run the CLI from (repeatable; default: this one)")
    ap.add_argument("--repeats", type=int, default=2, help="warm runs per source (median shown)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the world, caches and stores go (default: temp)")
    args = ap.parse_args(argv)
    sources = [s.resolve() for s in args.source or [Path(__file__).resolve().parents[2]]]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="real-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NLTK_DATA", str(work / "nltk"))
    preset = _world(work)
    print(f"tiny real world: {preset}; sft, {STEPS} steps, one evaluation; 1 torch thread")
    dirs = {src: (work / f"cache-{i}-{src.name}", work / f"store-{i}-{src.name}") for i, src in enumerate(sources)}
    rows: dict[Path, dict[str, list]] = {src: {"cold": [], "store": [], "warm": [], "again": [], "imports": []}
                                         for src in sources}
    for src, (cache, store) in dirs.items():
        for d in (cache, store):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        rows[src]["cold"].append(_one(src, preset, cache, store, sys.executable))
    modules = {src: _third_party_modules(src, preset, cache, store, sys.executable)
               for src, (cache, store) in dirs.items()}
    for _ in range(args.repeats):  # sources and rows alternate, so a drifting machine load hits each alike
        for src, (cache, store) in dirs.items():
            rows[src]["warm"].append(_one(src, preset, cache, store, sys.executable))
            rows[src]["imports"].append(_imports_only(modules[src], sys.executable))
    for src, (cache, store) in dirs.items():
        shutil.rmtree(store)
        store.mkdir()
        rows[src]["store"].append(_one(src, preset, cache, store, sys.executable))
        rows[src]["again"] = _in_worker(src, preset, cache, store, sys.executable, args.repeats)
    for src in sources:
        print(f"{src}:")
        for label, runs in rows[src].items():
            print(_row(label, runs))
        print(f"  (imports: the {len(modules[src])} third-party modules a warm run loads, imported alone)")

if __name__ == "__main__":
    main()
