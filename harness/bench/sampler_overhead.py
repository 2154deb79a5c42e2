"""Sampler overhead, side by side in one process: `python -m harness.bench.sampler_overhead [--world toy]`.

Times the harness's `HFSampler.generate` (length grouping, end-token trimming,
decoding, cost accounting) against a raw `model.generate` call on the same
prompts, the same number of samples per prompt and the same batch size, and
prints the throughput ratio. Repeats alternate the two sides, each repeat seeding both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.config import resolve_config
from harness.run import prepare_world
from harness.sampler import HFSampler


def main() -> None:
    """Run the comparison and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="micro")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_config(world=args.world, method="grpo")
    world, _, model, tok, _, _ = prepare_world(cfg, progress=True)
    model.eval()
    items = world.train_items[: args.prompts]
    prompts = [tok.encode(it.prompt, add_special_tokens=False) for it in items]
    sampler = HFSampler(model, tok, batch_size=args.prompts * args.samples)
    ids = torch.tensor(prompts)  # toy prompts of one task share a length: no padding on either side
    max_new = world.max_new_tokens

    def raw() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                           top_k=None, max_new_tokens=max_new, num_return_sequences=args.samples,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def harness() -> None:
        sampler.generate(prompts, n=args.samples, temperature=1.0, max_new_tokens=max_new)

    raw_t, harness_t = [], []
    for rep in range(args.repeats):
        for fn, out in ((raw, raw_t), (harness, harness_t)):
            torch.manual_seed(rep)  # the same random stream on both sides: the same samples, the same lengths
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    r, h = statistics.median(raw_t), statistics.median(harness_t)
    n = args.prompts * args.samples
    print(f"[{args.world}] {args.prompts} prompts x {args.samples} samples, median of {args.repeats}:")
    print(f"  raw model.generate   {n / r:8.0f} sequences/s")
    print(f"  harness HFSampler    {n / h:8.0f} sequences/s   throughput ratio {r / h:.2f}x of raw")


if __name__ == "__main__":
    main()
