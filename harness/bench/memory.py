"""Peak memory per trained token and per KL token at Qwen's vocabulary (V = 151,936), before and after chunking.

    python -m harness.bench.memory [--tokens 256 768] [--threads 1]

Builds a tiny random-init Qwen2 (hidden 64, 2 layers, tied embeddings, V = 151,936; nothing is downloaded)
on the CPU and measures, each in a fresh subprocess:

  train    one `Trainer.update`: forward, an NLL loss over the response, backward, AdamW step. "before" swaps
           in the old engine forward kept below (full [B, T-1, V] float32 log-softmax, entropy with gradient
           for every method, logits kept on the batch); "after" is harness.engine.forward.
  train+H  the same with the entropy in the loss (a method with `needs_entropy_grad`, i.e. TRAPO).
  ref      one no-gradient reference pass (methods.common.reference_logp: SFT's KL anchor, GRPO's
           reference and π_old log-probs); "before" is the old forward under no_grad.
  kl       harness.metrics.kl_to_base over the whole batch; "before" is the old implementation kept below.

How memory is measured (Linux): the child runs the call once at the measured size (so gradients, AdamW
state and lazy initialisation exist: the figure is what one more step costs), resets the kernel's peak-RSS
counter (writing 5 to /proc/self/clear_refs resets VmHWM), reads VmRSS, runs the call again and reads
VmHWM. The figure is VmHWM minus that VmRSS: every page the process touched, torch's CPU allocations
included (tracemalloc would not see them). Children run with MALLOC_MMAP_THRESHOLD_=1 MiB so that glibc
hands every freed tensor back to the kernel (see `_run_child`). Sequences are a 4-token prompt and a
64-token response; "tokens" are response tokens (trained or KL-scored). Two figures per row: the peak
divided by the tokens at the larger size, and the slope between the two sizes, i.e. what each extra token
costs once the fixed buffers (a chunk's logits, parameter gradients) are paid.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

V = 151_936
PROMPT, RESPONSE = 4, 64
PAD = 0
KINDS = ("train", "train+H", "ref", "kl")
GOALS = {"train": 0.6, "train+H": 0.6, "ref": None, "kl": 0.5}  # MB per token, from issue 11


def _old_forward(model: torch.nn.Module, batch, precision: str = "fp32", entropy_grad: bool = False) -> None:
    """The engine's forward before chunking (kept verbatim in effect): the "before" figure."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)                      # [B, T-1, V]
    batch.logits = logits
    batch.logp = logprobs.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    batch.entropy = -(logprobs.exp() * logprobs).sum(-1)                      # [B, T-1]


@torch.no_grad()
def _old_kl_to_base(policy, base, prompts_ids, responses_ids, batch_size: int, pad_id: int) -> float:
    """metrics.kl_to_base before chunking: two [B, T-1, V] log-softmaxes and their products."""
    from harness.data import Example, collate
    totals = []
    for s in range(0, len(prompts_ids), batch_size):
        b = collate([Example(p, r) for p, r in zip(prompts_ids[s:s + batch_size], responses_ids[s:s + batch_size])],
                    pad_id)
        logp0 = torch.log_softmax(base(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float(), -1)
        logp = torch.log_softmax(policy(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float(), -1)
        p0 = logp0.exp()
        kl = torch.where(p0 > 0, p0 * (logp0 - logp), torch.zeros_like(p0)).sum(-1)
        totals.append((kl * b.response_mask).sum(-1).double().numpy())
    return float(np.mean(np.concatenate(totals)))


def _model(seed: int) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=PROMPT + RESPONSE, tie_word_embeddings=True,
                      pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).eval()


def _examples(n: int, seed: int = 0) -> list:
    from harness.data import Example
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, PROMPT + RESPONSE), generator=g).tolist()
    return [Example(row[:PROMPT], row[PROMPT:]) for row in ids]


def _status(key: str) -> int:
    """A /proc/self/status field in kB."""
    return int(re.search(rf"^{key}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M).group(1))


def _measure(kind: str, impl: str, tokens: int, threads: int) -> dict[str, float]:
    """Peak MB above the pre-call RSS and seconds of one measured call (run in a fresh child process)."""
    from harness import engine, metrics
    from harness.config import TrainConfig
    from harness.data import collate
    from harness.method import LossOutput
    from methods.common import reference_logp

    torch.set_num_threads(threads)
    before = impl == "before"
    model = _model(0)
    if kind in ("train", "train+H"):
        if before:
            engine.forward = _old_forward  # the Trainer looks `forward` up at call time
        coef = 1e-3 if kind == "train+H" else 0.0
        tr = engine.Trainer(model, PAD, TrainConfig(lr=1e-4, batch_size=10**6, micro_batch_size=10**6, max_steps=10,
                                                    warmup_ratio=0.0))

        def loss(ctx, b):
            return LossOutput(-b.logp - coef * b.entropy)

        def call(ex):
            return tr.update(ex, loss, None, "token", entropy_grad=coef > 0)
    elif kind == "ref":
        def call(ex):
            b = collate(ex, PAD)
            if before:
                with torch.no_grad():
                    _old_forward(model, b)
                return b.logp
            return reference_logp(model, b)
    else:
        base = _model(1)
        kl = _old_kl_to_base if before else metrics.kl_to_base

        def call(ex):
            return kl(model, base, [e.prompt_ids for e in ex], [e.response_ids for e in ex], len(ex), PAD)
    examples = _examples(tokens // RESPONSE)
    call(examples)  # warm-up at the measured size: gradients, optimizer state, allocator and lazy state settle
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss0 = _status("VmRSS")
    t = time.perf_counter()
    call(examples)
    seconds = time.perf_counter() - t
    return {"peak_mb": (_status("VmHWM") - rss0) / 1024, "seconds": seconds}


def _run_child(kind: str, impl: str, tokens: int, threads: int) -> dict[str, float]:
    # A fixed glibc mmap threshold returns every freed block >= 1 MiB to the kernel at once; with glibc's dynamic
    # threshold a freed block under 32 MiB raises it, later blocks of that size stay in the heap after their free,
    # and the peak depends on the order of frees (measured here: up to ~120 MB more at 256 tokens, after).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, "-m", "harness.bench.memory", "--child", kind, impl, str(tokens),
                          "--threads", str(threads)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"measurement {kind}/{impl}/{tokens} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Measure every (kind, before/after, size) in its own process and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs=2, default=[256, 768], metavar=("SMALL", "LARGE"),
                    help=f"response tokens per call, multiples of {RESPONSE} (default 256 768)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1)")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--child", nargs=3, metavar=("KIND", "IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, impl, tokens = args.child
        print(json.dumps(_measure(kind, impl, int(tokens), args.threads)))
        return
    small, large = args.tokens
    if small % RESPONSE or large % RESPONSE or small >= large:
        ap.error(f"--tokens: two increasing multiples of {RESPONSE}")
    print(f"tiny Qwen2 (hidden 64, 2 layers), V = {V:,}, CPU, {args.threads} thread(s); sequences of "
          f"{PROMPT} prompt + {RESPONSE} response tokens; peak = VmHWM - VmRSS before the call, fresh process each")
    head = (f"{'measure':<8} {'path':<6} {'peak MB @' + str(small):>13} {'peak MB @' + str(large):>13} "
            f"{'MB/token @' + str(large):>14} {'MB/extra token':>15} {'s @' + str(large):>8}  goal")
    print(head)
    print("-" * len(head))
    for kind in args.kinds:
        for impl in ("before", "after"):
            a, b = _run_child(kind, impl, small, args.threads), _run_child(kind, impl, large, args.threads)
            per = b["peak_mb"] / large
            slope = (b["peak_mb"] - a["peak_mb"]) / (large - small)
            goal = GOALS[kind]
            verdict = "" if goal is None or impl == "before" else (
                f"<= {goal}: {'met' if max(per, slope) <= goal else 'NOT met'}")
            print(f"{kind:<8} {impl:<6} {a['peak_mb']:>13.0f} {b['peak_mb']:>13.0f} {per:>14.3f} {slope:>15.3f} "
                  f"{b['seconds']:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
