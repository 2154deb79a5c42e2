"""The GPU check's rows for what real use runs around the samplers (harness.bench.gpu_check `--checks paths`):

- the weight push after a real AdamW step of the engine (the push key changes; on vLLM the pushes are counted and
  the greedy tokens after the push are compared with the transformers sampler's on the same weights);
- sleep mode: vLLM asleep, a training step plus an allocation of most of the free GPU memory, then a wake;
- the evaluation of record (lm-eval's hf backend; vllm where installed) while this process holds a trainer;
- two ranks: a DDP step of the engine on 2 NCCL processes where 2 GPUs exist, else a row saying why not.

vLLM rows say "not installed" (or "needs cuda") instead of failing: the exit code reflects what ran.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from harness.bench.gpu_inputs import Measured, Row, vllm_missing

GiB = 2**30
SLEEP_FILL = 0.8  # the share of the free GPU memory the step in the sleep check allocates while vLLM sleeps


def _trainer(path: str, device: str):
    """(policy, tokenizer, engine Trainer with fused AdamW on cuda, SFT method, examples) over the saved model."""
    from harness.config import TrainConfig
    from harness.data import Example
    from harness.engine import Trainer
    from harness.modeling import load_model
    from harness.method import get_method
    model, tok = load_model(path, device=device)
    cfg = TrainConfig(batch_size=4, micro_batch_size=2, device=device, lr=1e-3, max_steps=100,
                      precision="bf16" if device == "cuda" else "fp32", fused_adamw=device == "cuda",
                      threads=None if device == "cuda" else 1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(tok.vocab_size, 32000), (4, 24), generator=gen).tolist()
    examples = [Example(s[:12], s[12:]) for s in ids]
    sft = get_method("sft")
    return model, tok, Trainer(model, tok.pad_token_id, cfg), sft(sft.Config()), examples


def _prompts(tok, n: int = 4) -> list[list[int]]:
    return [tok.encode(f"Question {i}: say something short.", add_special_tokens=False) for i in range(n)]


def push_rows(path: str, device: str) -> list[Row]:
    """An engine step (AdamW, fused on cuda) changes the push key; on vLLM it is pushed once and samples as HF."""
    from harness.sampler import HFSampler
    from harness.vllm_sampler import weights_key
    rows = Measured()
    model, tok, trainer, sft, examples = _trainer(path, device)
    key = weights_key(model)
    trainer.update(examples, sft.loss, None)
    kernel = "fused" if device == "cuda" else "foreach"
    rows.append(("push key after AdamW step", "ok" if weights_key(model) != key else "FAIL",
                 f"{kernel} AdamW step {'changed' if weights_key(model) != key else 'did NOT change'} the key", "—"))
    missing = vllm_missing(device)
    if missing:
        rows.append(("push vllm after AdamW step", missing, "—", "1 push; greedy = hf"))
        return rows
    from harness.vllm_sampler import VLLMSampler
    prompts = _prompts(tok)
    engine = VLLMSampler(model, tok, dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
                         enforce_eager=True)  # fp32: the same weights as the HF sampler's, token for token
    try:
        pushes, real = [], engine._push
        engine._push = lambda w: (pushes.append(1), real(w))
        engine.generate(prompts, n=1, temperature=0, max_new_tokens=16)
        pushes.clear()
        trainer.update(examples, sft.loss, None)
        got = [c[0].response_ids for c in engine.generate(prompts, n=1, temperature=0, max_new_tokens=16)]
        want = [c[0].response_ids for c in HFSampler(model, tok).generate(prompts, n=1, temperature=0,
                                                                          max_new_tokens=16)]
        same = sum(g == w for g, w in zip(got, want))
        ok = pushes == [1] and same == len(prompts)
        rows.append(("push vllm after AdamW step", "ok" if ok else "FAIL",
                     f"{len(pushes)} push(es); greedy = hf on {same}/{len(prompts)} prompts", "1 push; greedy = hf"))
    finally:
        engine.close()
    return rows


def sleep_rows(path: str, device: str) -> list[Row]:
    """vLLM asleep, a training step and an allocation of most of the free memory, freed, then a wake and a sample."""
    missing = vllm_missing(device)
    rows = Measured()
    if missing:
        rows.append(("sleep -> train -> wake", missing, "—", "no out-of-memory"))
        return rows
    from harness.vllm_sampler import VLLMSampler
    model, tok, trainer, sft, examples = _trainer(path, device)
    engine = VLLMSampler(model, tok, dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=256,
                         enable_sleep_mode=True, enforce_eager=True)
    try:
        engine.generate(_prompts(tok), n=1, temperature=0, max_new_tokens=8)  # wakes, samples, sleeps
        trainer.update(examples, sft.loss, None)
        free, total = torch.cuda.mem_get_info()
        fill = torch.empty(int(SLEEP_FILL * free), dtype=torch.uint8, device="cuda")  # what a large step grows into
        grown = fill.numel()
        del fill  # freed but still reserved by torch's allocator until the cache is emptied before the wake
        start = time.perf_counter()
        out = engine.generate(_prompts(tok), n=1, temperature=0, max_new_tokens=8)
        rows.append(("sleep -> train -> wake", "ok" if all(out) else "FAIL",
                     f"{grown / GiB:.1f} of {total / GiB:.0f} GiB allocated asleep; woke and sampled in "
                     f"{time.perf_counter() - start:.1f} s", "no out-of-memory"))
    finally:
        engine.close()
    return rows


def record_rows(path: str, device: str, world_cfg: dict, backends: list[str]) -> list[Row]:
    """The evaluation of record of a checkpoint, in its own process, while this one holds a trainer's state."""
    from harness.config import resolve_config
    from harness.record_eval import record_eval
    from harness.world import build_world
    rows = Measured()
    model, _, trainer, sft, examples = _trainer(path, device)
    trainer.update(examples, sft.loss, None)  # AdamW state exists: what a run holds at an evaluation point
    cfg = resolve_config(overrides={"world": world_cfg})
    world = build_world(cfg.world)
    held = torch.cuda.memory_allocated() / GiB if device == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="record-") as tmp:
        ckpt = Path(tmp) / "ckpt"
        model.save_pretrained(ckpt)
        for backend in ("hf", "vllm"):
            if backend not in backends:
                continue
            missing = vllm_missing(device) if backend == "vllm" else None
            if missing:
                rows.append((f"record eval {backend}", missing, "—", "scored beside the trainer"))
                continue
            try:
                res = record_eval(world, ckpt, backend, out_dir=Path(tmp) / backend, device=device, timeout_s=600)
                docs = sum(len(c) for sc in res.splits.values() for c in sc.correct.values())
                beside = f", parent holding {held:.1f} GiB" if held is not None else ""
                rows.append((f"record eval {backend}", "ok", f"{docs} docs in {res.seconds:.0f} s{beside}",
                             "scored beside the trainer"))
            except Exception as e:  # noqa: BLE001 (a row, the other backend still runs)
                rows.append((f"record eval {backend}", "FAIL", f"{type(e).__name__}: {str(e)[:100]}",
                             "scored beside the trainer"))
    del trainer, model
    return rows


def _rank_main(rank: int, port: int, path: str, out: str) -> None:
    """One of two NCCL ranks: an engine step of DDP; writes this rank's parameter checksum after it."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from harness import distributed
    assert distributed.init_from_env("cuda")
    try:
        model, _, trainer, sft, examples = _trainer(path, "cuda")
        start = time.perf_counter()
        trainer.update(examples, sft.loss, None)  # each rank trains its share of the whole step
        torch.cuda.synchronize()
        total = float(sum(p.double().sum() for p in model.parameters()))
        Path(out, f"rank{rank}").write_text(f"{total!r} {time.perf_counter() - start:.2f} "
                                            f"{torch.distributed.get_backend()}")
    finally:
        torch.distributed.destroy_process_group()


def ranks_rows(path: str, device: str) -> list[Row]:
    """Two NCCL ranks take one engine step and end with the same weights; a row saying why not where they cannot."""
    rows = Measured()
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus < 2:
        why = "needs --device cuda" if device != "cuda" else f"{gpus} GPU here: two NCCL ranks need 2"
        rows.append(("two ranks (nccl)", "not run", why, "same weights on both"))
        return rows
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="ranks-") as out:
        mp.spawn(_rank_main, args=(port, path, out), nprocs=2, join=True)
        (a, sec, backend), (b, _, _) = (Path(out, f"rank{r}").read_text().split() for r in (0, 1))
    rows.append(("two ranks (nccl)", "ok" if a == b else "FAIL",
                 f"one DDP step over {backend} in {float(sec):.1f} s; checksums {'equal' if a == b else 'DIFFER'}",
                 "same weights on both"))
    return rows


def rows(model: str, device: str, backends: list[str], world: dict) -> list[Row]:
    """(e): every row of this module: push, sleep/wake, the evaluation of record, two ranks."""
    out: list[Row] = []
    for part in (lambda: push_rows(model, device), lambda: sleep_rows(model, device),
                 lambda: record_rows(model, device, world, backends), lambda: ranks_rows(model, device)):
        try:
            out += part()
        except Exception as e:  # noqa: BLE001 (one broken path is a row; the others still run)
            out.append(("paths", "FAIL", f"{type(e).__name__}: {str(e)[:100]}", "—"))
    return out
