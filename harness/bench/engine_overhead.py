"""Engine overhead, measured side by side in one process: `python -m harness.bench.engine_overhead [--world toy]`.

Prints (1) training throughput of the harness's `Trainer.update` (SFT loss, φ
statistics, masks, token-level reduction) against a bare PyTorch loop (HF
`labels=` loss, AdamW, clipping) on the same model and batches, and (2) the cost
of the full-vocabulary entropy that DDT's φ = log p + H needs, as the time of
the engine's forward pass with and without it. Repeats alternate the two sides
so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from harness.config import resolve_config
from harness.data import collate
from harness.engine import Trainer, forward
from harness.run import prepare_world
from harness.method import get_method


def bare_step(model, opt, batch, clip: float) -> None:
    """The plain loop a researcher would write: HF loss on response tokens, AdamW, clipping."""
    labels = batch.input_ids.clone()
    labels[:, 1:][batch.loss_mask == 0] = -100
    labels[:, 0] = -100
    loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    """Run both measurements and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="micro")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_config(world=args.world, method="sft", overrides=["train.batch_size=32",
                                                                          "train.micro_batch_size=32"])
    world, _, policy, tok, _, _ = prepare_world(cfg, progress=True)
    method = get_method("sft")(cfg.method_args)
    from harness.context import Context
    from harness.sampler import HFSampler
    trainer = Trainer(copy.deepcopy(policy), tok.pad_token_id, cfg.train)
    ctx = Context(run_cfg=cfg, world=world, policy=trainer.model, tokenizer=tok,
                  base_path="", trainer=trainer, sampler=HFSampler(trainer.model, tok), log=lambda *a: None)
    examples = method.data(ctx, 0).examples
    steps = [examples[i * 32:(i + 1) * 32] for i in range(args.steps) if (i + 1) * 32 <= len(examples)]
    steps = (steps * (args.steps // max(1, len(steps)) + 1))[: args.steps]
    batches = [collate(s, tok.pad_token_id) for s in steps]
    bare_model = copy.deepcopy(policy).train()
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas)
    harness_t, bare_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for b in batches:
            bare_step(bare_model, bare_opt, b, cfg.train.grad_clip)
        bare_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        for s in steps:
            trainer.update(s, method.loss, ctx)
        harness_t.append(time.perf_counter() - t)
    h, b = statistics.median(harness_t), statistics.median(bare_t)
    print(f"[{args.world}] {len(steps)} steps x batch 32, median of {args.repeats}:")
    print(f"  bare PyTorch loop   {len(steps) / b:7.1f} steps/s")
    print(f"  harness engine      {len(steps) / h:7.1f} steps/s   throughput ratio {b / h:.2f}x of bare")

    def logp_only(model, batch) -> None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        torch.log_softmax(logits.float(), -1).gather(-1, batch.targets.unsqueeze(-1))

    with_h, without_h = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for bt in batches:
            logp_only(policy, bt)
        without_h.append(time.perf_counter() - t)
        t = time.perf_counter()
        for bt in batches:
            forward(policy, bt)
        with_h.append(time.perf_counter() - t)
    w, wo = statistics.median(with_h), statistics.median(without_h)
    print(f"  forward with entropy (for φ) {w:.3f} s vs log-probs only {wo:.3f} s: entropy costs {100 * (w / wo - 1):+.0f}%")


if __name__ == "__main__":
    main()
