"""Where a run's time goes, per method: `python -m harness.bench.run_costs [--world toy] [--methods all] [key=value ...]`.

Runs each method once (the sweep's default settings plus any overrides) into a
throw-away MLflow store and prints, per method, the seconds spent training
(forward/backward/optimizer, incl. TMS's teacher steps), generating (sampling
for on-policy data and rollouts), evaluating (lm-eval greedy generation on every
task, PLD and KL) and the rest (setup, logging), and the run's wall time. The
base model must be cached (the first call pretrains it).

`--compare` measures the harness's speed shortcuts in one process: after one
untimed warm-up run, each method runs `--repeats` times with the shortcuts off
("before": the code as it was) and on ("after"), alternating so that a busy
machine slows both alike, and the table gives both and the after/before ratios
of wall time and of this process's CPU time (steadier when other jobs share the
cores). Both must log the same numbers; the final metrics are compared
exactly and any difference is reported. A sweep worker runs many runs in one
process, like this one: "after" runs are warm (cached evaluator, frozen heap),
as they are from a worker's second run on.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import tempfile
import time
from typing import Iterator

from harness import metric_names as N
from harness.config import resolve_config
from harness.run import run
from harness.method import method_names

TIMING = N.COST_SECONDS


@contextlib.contextmanager
def shortcuts_off() -> Iterator[None]:
    """The harness without its speed shortcuts, for `--compare`'s "before" runs.

    Off: the in-process evaluator cache and base-run cache (harness.run), the frozen heap (gc.freeze), the
    frozen base's cached log-probs in kl_to_base (harness.metrics), and greedy evaluation's shortcuts
    (harness.greedy: transformers' generate at full batch width until the longest answer, every row's whole
    response decoded at every step, as before), and the sampler's own loop (harness.sampler: `generate` samples
    from the global RNG; the samples differ, so sampling methods' metrics differ too, by chance only).
    """
    import torch
    from transformers import StoppingCriteria

    from harness import evaluation, greedy, metrics, sampler
    from harness import run as run_mod

    class FullDecodeStop(StoppingCriteria):
        def __init__(self, tokenizer, stop, prompt_len, eos_ids=None):
            self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len

        def __call__(self, input_ids, scores, **_):
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:].tolist(), skip_special_tokens=True)
            return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)

    kl_to_base = metrics.kl_to_base
    patches = [
        (greedy, "_StopOnStrings", FullDecodeStop),
        (greedy, "producible_stops", lambda tok, stops, vocab_size=0: [s for s in stops if s]),
        (greedy, "plain_argmax_greedy", lambda model, sampling=False: False),
        (sampler, "plain_argmax_greedy", lambda model, sampling=False: False),
        (metrics, "kl_to_base", lambda *a, cache_base=False, **k: kl_to_base(*a, **k)),
        (run_mod, "_evaluator", lambda world, tok, batch_size, score_batch_size=None:
            evaluation.Evaluator(world, tok, batch_size, score_batch_size=score_batch_size)),
        (run_mod, "_freeze_heap", lambda: None),
        (run_mod, "_BASE_RUNS", set()),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    gc.unfreeze()  # the heap as a process without gc.freeze has it
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _one(world: str, name: str, overrides: list[str]) -> tuple[dict, float, float]:
    """A run's final metrics, wall seconds and CPU seconds of this process (steadier on a shared machine)."""
    cfg = resolve_config(world=world, method=name, preset=None, overrides=overrides)
    cfg.tracking.experiment = "run-costs"
    t, c = time.perf_counter(), time.process_time()
    final = run(cfg, progress=False)
    return final, time.perf_counter() - t, time.process_time() - c


def _split(final: dict, wall: float) -> tuple[float, ...]:
    train, gen, ev = final[N.COST_TRAIN_S], final[N.COST_GEN_S], final[N.COST_EVAL_S]
    return train, gen, ev, wall - train - gen - ev, wall


def _same(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two runs' final metrics (timings aside), compared exactly."""
    keys = (set(a) | set(b)) - set(TIMING)
    return sorted(k for k in keys if repr(a.get(k)) != repr(b.get(k)))


def compare(world: str, names: list[str], overrides: list[str], repeats: int) -> None:
    """Before/after table of each method, measured alternately in this process."""
    from harness import run as run_mod

    print("warm-up run (untimed)", flush=True)
    _one(world, names[0], overrides + ["train.max_steps=2", "train.eval_every=2"])
    times: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    mismatches: dict[str, list[str]] = {}
    for rep in range(repeats):
        for name in names:
            finals = {}
            for mode in ("before", "after") if rep % 2 == 0 else ("after", "before"):
                if mode == "after":
                    run_mod._freeze_heap()  # what a worker pays once, at its first run; not this run's cost
                with shortcuts_off() if mode == "before" else contextlib.nullcontext():
                    final, wall, cpu = _one(world, name, overrides)
                finals[mode] = final
                times.setdefault((name, mode), []).append((*_split(final, wall), cpu))
                print(f"  {name} {mode}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            diff = _same(finals["before"], finals["after"])
            if diff:
                mismatches[name] = diff
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in times.items()}
    print(f"\nworld={world} overrides={' '.join(overrides) or '(none)'} repeats={repeats} (medians, seconds)")
    print(f"{'method':<14}{'mode':<8}{'train s':>9}{'gen s':>8}{'eval s':>8}{'other s':>9}{'wall s':>8}{'ratio':>7}"
          f"{'CPU s':>8}{'ratio':>7}")
    tot = {(m, i): 0.0 for m in ("before", "after") for i in (4, 5)}
    for name in names:
        b = med[(name, "before")]
        for mode in ("before", "after"):
            r = med[(name, mode)]
            tot[(mode, 4)] += r[4]
            tot[(mode, 5)] += r[5]
            ratios = (f"{r[4] / b[4]:>7.2f}", f"{r[5] / b[5]:>7.2f}") if mode == "after" else ("", "")
            print(f"{name:<14}{mode:<8}{r[0]:>9.1f}{r[1]:>8.1f}{r[2]:>8.1f}{r[3]:>9.1f}{r[4]:>8.1f}{ratios[0]:>7}"
                  f"{r[5]:>8.1f}{ratios[1]:>7}")
    for i, what in ((4, "wall"), (5, "CPU")):
        print(f"total {what}: {tot[('before', i)]:.1f} -> {tot[('after', i)]:.1f} s, "
              f"ratio {tot[('after', i)] / tot[('before', i)]:.2f}")
    if mismatches:
        print("FINAL METRICS DIFFER:", mismatches)
    else:
        print("final metrics identical (timings aside) in every before/after pair")


def main() -> None:
    """Run the methods one after another and print the time split table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="toy")
    ap.add_argument("--methods", default="all", help="comma-separated names, or all")
    ap.add_argument("--compare", action="store_true", help="before/after the speed shortcuts, in this process")
    ap.add_argument("--repeats", type=int, default=1, help="with --compare: before/after pairs per method")
    ap.add_argument("overrides", nargs="*", help="run settings, e.g. train.lr=3e-4 train.max_steps=100")
    args = ap.parse_args()
    names = method_names() if args.methods == "all" else args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        if args.compare:
            compare(args.world, names, args.overrides, args.repeats)
            return
        rows = []
        for name in names:
            final, wall, _ = _one(args.world, name, args.overrides)
            rows.append((name, *_split(final, wall), final[N.TARGET_GAIN], final[N.NONTARGET_DROP]))
            print(f"  {name}: {wall:.1f} s", flush=True)
    print(f"\nworld={args.world} overrides={' '.join(args.overrides) or '(none)'}")
    print(f"{'method':<14}{'train s':>9}{'gen s':>8}{'eval s':>8}{'other s':>9}{'wall s':>8}{'gain':>8}{'drop':>7}")
    for r in rows:
        print(f"{r[0]:<14}{r[1]:>9.1f}{r[2]:>8.1f}{r[3]:>8.1f}{r[4]:>9.1f}{r[5]:>8.1f}{r[6]:>+8.1f}{r[7]:>7.1f}")
    tot = [sum(r[i] for r in rows) for i in range(1, 6)]
    print(f"{'total':<14}{tot[0]:>9.1f}{tot[1]:>8.1f}{tot[2]:>8.1f}{tot[3]:>9.1f}{tot[4]:>8.1f}")


if __name__ == "__main__":
    main()
