"""Time lm-eval evaluation against a plain batched `generate` loop on the same model, side by side.

    python -m harness.bench.eval_overhead [--world micro|toy] [--repeats 3]

Both paths share the greedy generation routine (harness.evaluation.greedy_generate),
so the ratio is the cost of lm-eval's machinery: request building, filters,
process_results and per-sample logging. The world's base is built on first use
(cached under $HARNESS_CACHE). Timed calls alternate between the two paths
after one untimed warm-up each, so drifting machine load hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run both evaluations `--repeats` times and print the times and their ratio."""
    from harness.config import world_presets

    presets = world_presets("toy")

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="micro", choices=sorted(presets))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings comparable)")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from benchmarks.world import ToyWorld, WorldConfig
    from harness.evaluation import Evaluator
    from harness.modeling import load_model

    world = ToyWorld(WorldConfig(name=args.world, **presets[args.world].get("world", {})))
    model, tok = load_model(world.base_path(progress=True))
    start = time.perf_counter()
    ev = Evaluator(world, tok, batch_size=args.batch_size)
    build = time.perf_counter() - start
    n = sum(len(v) for v in ev.items.values())
    print(f"world {args.world}: {len(ev.items)} tasks, {n} prompts, max_new_tokens {world.max_new_tokens}, "
          f"batch {args.batch_size}, {args.threads} thread(s); Evaluator built in {build:.2f} s (once per world)")

    lm, plain = ev.evaluate(model), ev.plain_evaluate(model)  # warm-up; also the agreement check
    if lm.acc != plain.acc or lm.responses != plain.responses:
        raise SystemExit(f"lm-eval and the plain loop disagree: {lm.acc} vs {plain.acc}")
    print("acc (points): " + ", ".join(f"{t} {a:.1f}" for t, a in lm.acc.items()) + "  (both paths agree)")

    times: dict[str, list[float]] = {"lm-eval": [], "plain": []}
    for _ in range(args.repeats):
        times["lm-eval"].append(ev.evaluate(model).seconds)
        times["plain"].append(ev.plain_evaluate(model).seconds)
    for name, ts in times.items():
        print(f"{name:>8}: " + "  ".join(f"{t:.3f}" for t in ts) + f"  s  (median {statistics.median(ts):.3f} s)")
    ratio = statistics.median(times["lm-eval"]) / statistics.median(times["plain"])
    print(f"ratio lm-eval / plain (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
