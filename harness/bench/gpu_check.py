"""GPU readiness check, offline: `python -m harness.bench.gpu_check [--device cuda|cpu] [--backend hf|vllm|both]
[--model PATH | --shape NAME] [--checks train,speed,paths,sample] [--steps N] [--compile-budget S]`.

(a) a small saved model: --model (a save_pretrained folder), else a tiny Qwen2 built here and taught to
answer briefly, or with --shape a random model of a published size (speed figures where no checkpoint is at hand); (b) every method for --steps steps through `harness.run.run` on a real-world preset
(IFEval target, ARC-Easy retention, local data files written here), bf16 autocast on cuda, fp32 on cpu;
(d) training tokens/s and model FLOPs utilisation, 6·N·tokens / seconds / the GPU's bf16 peak, through
the engine's own update; (e) the paths real use runs (harness.bench.gpu_paths): the weight push after an AdamW step, sleep -> training ->
wake, the evaluation of record beside a trainer, two NCCL ranks; (c) sampler throughput (sequences and tokens/s),
HF vs vLLM, bf16, on the same random-token prompts at a GRPO-sized batch and a bulk batch. Prints each row as it is
measured, then one table (check, result, figure, goal), and exits 1 on any FAIL: rows that could not run here
("not installed", "needs cuda", "not run", "skip") do not count. A goal counts where it applies: speed-ups with
both backends on cuda, MFU for 0.4-2B parameters; with train.compile=true the first compile must finish within
--compile-budget seconds (its time is printed).
Runs log to a private temporary MLflow store and cache, removed at the end.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from harness import metric_names as N
from harness.settings_input import deep_merge
from harness.cost import flops
from harness.errors import HarnessError
from harness.bench import gpu_paths
from harness.bench.gpu_inputs import Measured, Row, offline_inputs, preset, private_env, time_limit, vllm_missing
from harness.tiny import build_tiny_model

# Dense bf16 tensor-core peaks in FLOP/s (vendor data sheets), matched in order against torch's device name.
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12)]
GOALS = {"grpo": 6.0, "bulk": 20.0, "mfu": 0.40}
# Published shapes (the models' config.json) for random models of a real size where no checkpoint is at hand (an
# offline GPU machine): speed figures only. The vocabulary stays the tiny tokenizer's, so the embedding is smaller.
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=4096),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=4096),
}
CHECKS = ("train", "speed", "paths", "sample")
MFU_PARAMS = (0.4e9, 2.0e9)  # "a 0.5-1.5B model": Qwen2.5-0.5B has 0.49B parameters, 1.5B has 1.54B


def peak_flops(device: str) -> tuple[float | None, str]:
    """(bf16 peak FLOP/s or None, the device's name) for the current device."""
    if device != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name()
    return next((p for key, p in PEAK_BF16 if key in name), None), name


def train_methods(cfg_dict: dict, steps: int) -> list[Row]:
    """(b): every registered method through harness.run.run; ok iff it took `steps` steps with finite metrics."""
    from harness.config import resolve_config
    from harness.run import run
    from harness.method import method_names
    rows = Measured()
    for m in method_names():
        start = time.perf_counter()
        try:
            cfg = resolve_config(method=m, overrides=cfg_dict)
            final = run(cfg, progress=False)
            finite = all(math.isfinite(final[k]) for k in (N.TARGET_GAIN, N.NONTARGET_DROP, N.KL_TO_BASE))
            ok = final["steps"] == steps and finite
            figure = f"{final['steps']:.0f} steps in {time.perf_counter() - start:.1f} s"
        except Exception as e:  # noqa: BLE001 (one method's failure is a row; the others still run)
            ok, figure = False, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
        rows.append((f"train {m}", "ok" if ok else "FAIL", figure, f"{steps} steps, finite metrics"))
    return rows


def train_speed(path: str, device: str, batch: int, micro: int, seq_len: int, steps: int,
                train: dict | None = None, compile_budget: int | None = None) -> list[Row]:
    """(d): engine updates (SFT loss) on random sequences; tokens/s and MFU against the GPU's bf16 peak.

    `train`: TrainConfig settings of the engine under test (e.g. compile, fused_adamw); with compile, the warm-up
    step (the first compile) gets `compile_budget` seconds and its time is a row."""
    from harness.config import TrainConfig
    from harness.data import Example
    from harness.engine import Trainer
    from harness.modeling import load_model
    from harness.method import get_method
    model, tok = load_model(path, device=device)  # fp32 weights under bf16 autocast, as runs train
    cfg = TrainConfig(batch_size=batch, micro_batch_size=micro, precision="bf16" if device == "cuda" else "fp32",
                      device=device, max_steps=steps + 1, threads=None if device == "cuda" else 1, lr=1e-6,
                      **(train or {}))
    trainer, sft = Trainer(model, tok.pad_token_id, cfg), get_method("sft")(get_method("sft").Config())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(tok.vocab_size, 32000), (batch, seq_len), generator=gen).tolist()
    examples = [Example(s[: seq_len // 2], s[seq_len // 2:]) for s in ids]
    rows = Measured()
    compiling = bool((train or {}).get("compile"))
    warm = time.perf_counter()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    try:
        with time_limit(compile_budget if compiling else None):
            trainer.update(examples, sft.loss, None)  # warm-up: allocator, kernels (and a first compile)
            sync()
    except TimeoutError:
        rows.append(("train compile", "FAIL", f"first compile not done within {compile_budget} s",
                     f"≤ {compile_budget} s"))
        return rows
    warm = time.perf_counter() - warm
    print(f"train speed: warm-up step {warm:.1f} s; timing {steps} steps", file=sys.stderr, flush=True)
    if compiling:
        rows.append(("train compile", "ok", f"warm-up step with the first compile {warm:.1f} s",
                     f"≤ {compile_budget} s"))
    tokens0, start = trainer.cost.tokens["train"], time.perf_counter()
    for _ in range(steps):
        trainer.update(examples, sft.loss, None)
    sync()
    seconds, tokens = time.perf_counter() - start, trainer.cost.tokens["train"] - tokens0
    n, vocab = sum(p.numel() for p in model.parameters()), model.config.vocab_size
    del trainer, model
    peak, name = peak_flops(device)
    label = "".join(f", {k}={v}" for k, v in (train or {}).items())
    rows.append(("train tokens/s", "ok", f"{tokens / seconds:,.0f} tok/s ({n / 1e6:,.1f}M params, "
                 f"{batch}x{seq_len}, vocab {vocab}{label})", "—"))
    goal = f"≥ {GOALS['mfu']:.0%} for 0.5-1.5B"
    if peak is None:
        rows.append(("MFU", "n/a", f"n/a ({name}: no peak in the table)", goal))
        return rows
    mfu = flops(n, tokens, 0) / seconds / peak
    applies = MFU_PARAMS[0] <= n <= MFU_PARAMS[1]
    result = ("ok" if mfu >= GOALS["mfu"] else "FAIL") if applies else "ok"
    rows.append(("MFU", result, f"{mfu:.1%} of {peak / 1e12:.0f} TFLOP/s ({name})"
                 + ("" if applies else "; goal not applied to this size"), goal))
    return rows


def sampler_speed(path: str, device: str, backends: list[str], shapes: dict[str, tuple[int, int]],
                  prompt_len: int, max_new: int, hf_batch: int) -> list[Row]:
    """(c): sequences/s of each backend on the same prompts per shape, then the vLLM/HF speed-up per shape."""
    from harness.modeling import load_model
    from harness.sampler import HFSampler
    dtype = "bfloat16" if device == "cuda" else "float32"
    model, tok = load_model(path, dtype=dtype, device=device)
    gen = random.Random(0)
    vocab = min(tok.vocab_size, 32000)
    most = max(p for p, _ in shapes.values())
    prompts = [[gen.randrange(vocab) for _ in range(gen.randint(prompt_len // 2, prompt_len))] for _ in range(most)]
    rows = Measured()
    speed: dict[tuple[str, str], float] = {}
    for backend in [b for hf in backends for b in ((hf, "hf-generate") if hf == "hf" else (hf,))]:
        if backend == "vllm" and vllm_missing(device):
            rows.append(("sample vllm", vllm_missing(device), "—", "—"))
            continue
        try:
            start = time.perf_counter()
            if backend == "vllm":
                if device != "cuda":
                    raise HarnessError("the vLLM backend needs --device cuda")
                from harness.vllm_sampler import VLLMSampler
                sampler = VLLMSampler(model, tok, dtype="bfloat16", max_model_len=prompt_len + max_new + 8)
            else:  # "hf-generate": transformers' generate, every batch at full width until its longest sample
                sampler = HFSampler(model, tok, batch_size=hf_batch, own_loop=backend == "hf")
            startup = time.perf_counter() - start
            sampler.generate(prompts[:4], n=2, temperature=1.0, max_new_tokens=max_new)  # warm-up
            for shape, (p, n) in shapes.items():
                start, tokens = time.perf_counter(), sampler.cost.tokens["gen"]
                sampler.generate(prompts[:p], n=n, temperature=1.0, max_new_tokens=max_new)
                seconds, tokens = time.perf_counter() - start, sampler.cost.tokens["gen"] - tokens
                speed[backend, shape] = p * n / seconds
                started = f" (engine start {startup:.0f} s)" if backend == "vllm" else ""
                rows.append((f"sample {backend} {shape} {p}x{n}", "ok", f"{speed[backend, shape]:,.1f} seq/s, "
                             f"{tokens / seconds:,.0f} tok/s{started}", "—"))
        except Exception as e:  # noqa: BLE001
            rows.append((f"sample {backend}", "FAIL", f"{type(e).__name__}: {str(e)[:80]}", "—"))
    for shape, (p, n) in shapes.items():
        if ("hf", shape) in speed and ("hf-generate", shape) in speed:
            rows.append((f"hf loop/generate {shape}", "ok", f"{speed['hf', shape] / speed['hf-generate', shape]:.2f}x",
                         "—"))
        goal = f"≥ {GOALS[shape]:.0f}x HF"
        if ("hf", shape) not in speed or ("vllm", shape) not in speed:
            skip = "vllm" not in backends or vllm_missing(device)
            rows.append((f"vllm/hf {shape}", "skip" if skip else "FAIL", "—", goal))
            continue
        ratio = speed["vllm", shape] / speed["hf", shape]
        applies = device == "cuda"
        rows.append((f"vllm/hf {shape}", "ok" if ratio >= GOALS[shape] or not applies else "FAIL", f"{ratio:.1f}x",
                     goal))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as one aligned text table under a header."""
    head: Row = ("check", "result", "figure", "goal")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments; tiny settings make a CPU smoke run."""
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    ap.add_argument("--backend", choices=["hf", "vllm", "both"], default="both")
    ap.add_argument("--model", help="a save_pretrained folder (default: a tiny Qwen2 built here)")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="instead of --model: a randomly initialised model of this "
                    "published shape (tiny tokenizer), for speed figures on a machine without checkpoints")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="engine setting for every check, repeatable (train.compile=true, train.fused_adamw=true)")
    ap.add_argument("--checks", default=",".join(CHECKS),
                    help="comma-separated subset of train (every method), speed (tokens/s, MFU), sample (samplers)")
    ap.add_argument("--steps", type=int, default=3, help="steps per method, and timed steps of the MFU check")
    ap.add_argument("--compile-budget", type=int, default=240, metavar="S",
                    help="seconds the first compile may take in the speed check with train.compile=true")
    ap.add_argument("--grpo", type=int, nargs=2, default=[32, 5], metavar=("PROMPTS", "SAMPLES"))
    ap.add_argument("--bulk", type=int, nargs=2, default=[1024, 1], metavar=("PROMPTS", "SAMPLES"))
    ap.add_argument("--prompt-len", type=int, default=128, help="longest random prompt (shortest: half)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=512, help="HFSampler sequences per generate (eval.batch_size)")
    ap.add_argument("--mfu", type=int, nargs=3, default=[32, 8, 1024], metavar=("BATCH", "MICRO", "SEQ_LEN"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every check, print the table; 0 if nothing failed, 1 otherwise, 2 for a usage error."""
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA GPU; run on a GPU machine or pass --device cpu", file=sys.stderr)
        return 2
    if args.model and not (Path(args.model) / "config.json").exists():
        print(f"--model {args.model!r} is not a save_pretrained folder; pass one (no hub ids: the check is offline)",
              file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from harness.config import TrainConfig
    from harness.settings_input import parse_overrides
    try:
        settings = parse_overrides(args.train)
        if set(settings) - {"train"}:
            raise HarnessError("it takes train.* settings only")
        train = settings.get("train", {})
        TrainConfig(**train)
    except (HarnessError, ValidationError) as e:
        print(f"--train {' '.join(args.train)}: {str(e).splitlines()[0]}; e.g. --train train.compile=true",
              file=sys.stderr)
        return 2
    checks = args.checks.split(",")
    if args.model and args.shape or not set(checks) <= set(CHECKS):
        print(f"--checks takes a comma-separated subset of {','.join(CHECKS)}, and --model and --shape exclude each "
              "other; fix the arguments", file=sys.stderr)
        return 2
    backends = ["hf", "vllm"] if args.backend == "both" else [args.backend]
    if args.device == "cpu":
        torch.set_num_threads(1)  # tiny models run fastest single-threaded (train.threads' measurement)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, private_env(Path(tmp)):
        root = Path(tmp)
        data, tiny = offline_inputs(root)
        if args.shape:
            model = str(build_tiny_model(root / args.shape, "qwen2", sizes=SHAPES[args.shape]))
            described = f"random {args.shape} shape (tiny vocabulary), built here"
        else:
            model, described = args.model or tiny, args.model or "tiny Qwen2 (built here)"
        rows: list[Row] = [("model", "ok", described, "—")]
        runs: list[tuple[str, Callable[[], list[Row]]]] = [
            ("train", lambda: train_methods(deep_merge(preset(model, data, args.steps, args.device), {"train": train}),
                                            args.steps)),
            ("speed", lambda: train_speed(model, args.device, *args.mfu, args.steps, train, args.compile_budget)),
            ("paths", lambda: gpu_paths.rows(model, args.device, backends, preset(model, data, 1, args.device)["world"])),
            ("sample", lambda: sampler_speed(model, args.device, backends, {"grpo": tuple(args.grpo),
                                             "bulk": tuple(args.bulk)}, args.prompt_len, args.max_new_tokens,
                                             args.hf_batch))]
        checks = [(name, check) for name, check in runs if name in checks]
        for name, check in checks:  # vLLM last: its engine keeps its share of GPU memory until the process ends
            try:
                rows += check()
            except Exception as e:  # noqa: BLE001 (a broken check is a FAIL row, not a traceback)
                rows.append((name, "FAIL", f"{type(e).__name__}: {str(e)[:100]}", "—"))
    print(table(rows))
    failed = [r[0] for r in rows if r[1] == "FAIL"]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} rows without failure in {time.perf_counter() - start:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
