"""Cost accounting: the FLOP formula by hand, and every method's token counts per kind of pass on a hand-made run.

Each method runs on 4 micro prompts with generation replaced by a fixed answer, so every count is known:
a prompt `sort:ddddd=` is P = 11 tokens; an expert label `d,d,d,d,d|ddddd` + end token is L = 16; a correct
sampled answer `ddddd` + end token is A = 6; a wrong one `9` + end token is W = 2. Batches hold 2 sequences.
"""
from __future__ import annotations

import math

import pytest
import torch

from harness import sampler as sampler_mod

import harness.run
import methods._hinted as hinted_mod
from harness.config import resolve_config
from harness.cost import KINDS, Cost, flops
from method_harness import build, train

P, L, A, W = 11, 16, 6, 2


def test_flops_and_metrics_by_hand():
    # 6 * 1000 * 10 + 2 * 1000 * 5 = 60_000 + 10_000
    assert flops(1000, 10, 5) == 70_000
    cost = Cost()
    for kind, n in {"train": 10, "teacher": 2, "prefill": 3, "gen": 4, "ref": 5, "old": 6, "hinted": 7}.items():
        cost.add(kind, n)
    m = cost.metrics(1000)
    # trained kinds 6N per token, the rest 2N: 60k + 12k | 6k + 8k + 10k + 12k + 14k
    assert m == {"cost/flops_train": 60_000, "cost/flops_teacher": 12_000, "cost/flops_prefill": 6_000,
                 "cost/flops_gen": 8_000, "cost/flops_ref": 10_000, "cost/flops_old": 12_000,
                 "cost/flops_hinted": 14_000, "cost/flops": 122_000}
    assert cost.trained_tokens == 12
    with pytest.raises(ValueError, match="unknown cost kind 'decode'"):
        cost.add("decode", 1)


@pytest.fixture
def fixed_answers(micro_world, monkeypatch):
    """set(correct): every sample is the sorted digits + end token (A tokens) if correct, else `9` + end (W)."""
    _, model, tok = micro_world
    mode = {"correct": True}

    def generate(self, input_ids, attention_mask, pad_token_id, eos_token_id, **_):
        rows = []
        for ids, attn in zip(input_ids.tolist(), attention_mask.tolist()):
            text = tok.decode([t for t, a in zip(ids, attn) if a])
            answer = "".join(sorted(text.split(":")[1].split("=")[0])) if mode["correct"] else "9"
            rows.append(ids + tok.encode(answer, add_special_tokens=False) + [eos_token_id])
        return torch.tensor(rows)

    monkeypatch.setattr(type(model), "generate", generate)
    # the sampler samples through `generate` (its fallback), so the hand-made answers above are what it returns
    monkeypatch.setattr(sampler_mod, "plain_argmax_greedy", lambda model, sampling=False: False)
    return lambda correct: mode.update(correct=correct)


def run_counts(micro_world, name: str, overrides: list[str], steps: int = 2) -> dict[str, int]:
    """Token counts by kind after `steps` optimizer steps of `name` on the first 4 training prompts."""
    torch.manual_seed(0)
    ctx, method, trainer = build(micro_world, name, ["train.batch_size=2", "train.micro_batch_size=2", *overrides])
    ctx.world.train_items = ctx.world.train_items[:4]
    assert len(ctx.encode(ctx.world.train_items[0].prompt)) == P
    assert len(ctx.example("", ctx.world.train_items[0].label).response_ids) == L
    train(ctx, method, trainer, steps)
    ctx.close()
    assert ctx.sampler.cost is ctx.cost  # the sampler reports into the run's one counter
    return ctx.cost.tokens


def expect(**tokens: int) -> dict[str, int]:
    return {k: tokens.get(k, 0) for k in KINDS}


def test_sft_and_its_reference_pass(micro_world):
    # 2 steps x 2 labels x (P + L) = 108 trained; kl_beta > 0 scores the same 108 tokens under the base
    assert run_counts(micro_world, "sft", ["sft.kl_beta=0.1"]) == expect(train=108, ref=108)
    assert run_counts(micro_world, "sft", []) == expect(train=108)


def test_idft_expert(micro_world):
    assert run_counts(micro_world, "idft", []) == expect(train=2 * 2 * (P + L))


def test_self_sft(micro_world, fixed_answers):
    # sampling: 4 prompts x 2 samples: prefill 8 x P = 88, generated 8 x A = 48; one kept per prompt;
    # training: 2 steps x 2 x (P + A) = 68
    assert run_counts(micro_world, "self_sft", ["self_sft.samples=2"]) == expect(train=68, prefill=88, gen=48)


def test_onpolicy_sft(micro_world, fixed_answers):
    # one epoch = 4 kept / 2 per step = the 2 steps: one sampling pass, as Self-SFT
    assert run_counts(micro_world, "onpolicy_sft", ["onpolicy_sft.samples=2"]) == expect(train=68, prefill=88, gen=48)


def test_iterative_sft(micro_world, fixed_answers):
    # 2 rounds of 1 step: two sampling passes (2 x 88, 2 x 48), 2 x 2 x (P + A) = 68 trained
    counts = run_counts(micro_world, "iterative_sft", ["iterative_sft.samples=2", "iterative_sft.rounds=2"])
    assert counts == expect(train=68, prefill=176, gen=96)


def test_tms(micro_world, fixed_answers):
    # teacher: 2 steps x 2 x (P + L) = 108; α = 0 and one student epoch: each of the 4 prompts is drawn to one
    # snapshot, so the harvest samples 4 answers (prefill 4P = 44, generated 4A = 24); student 2 x 2 x (P + A) = 68
    counts = run_counts(micro_world, "tms", ["tms.checkpoints=2", "tms.teacher_steps=2", "tms.alpha=0"])
    assert counts == expect(train=68, teacher=108, prefill=44, gen=24)


def test_grpo_reference_and_old_policy_passes(micro_world, fixed_answers):
    # 2 prompts x 2 samples: prefill 4P = 44, generated 4A = 24; π_old (μ = 2) and reference (β > 0) each score
    # the 4 sequences once: 4 (P + A) = 68; the step is taken μ = 2 times: 136 trained
    counts = run_counts(micro_world, "grpo", ["grpo.prompts_per_step=2", "grpo.group_size=2",
                                              "grpo.num_iterations=2", "grpo.beta=0.05"])
    assert counts == expect(train=136, prefill=44, gen=24, ref=68, old=68)
    counts = run_counts(micro_world, "grpo", ["grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.beta=0"], 1)
    assert counts == expect(train=68, prefill=44, gen=24)  # μ = 1, β = 0: neither extra pass runs


def test_trapo_prefixes_count_as_prefill(micro_world, fixed_answers):
    fixed_answers(False)  # every rollout fails: 25% and 50% expert prefixes, then the full expert trajectory
    # stage 1: 4 x P; stage 2: 2 x (P + 6), the 25% cut after the 3rd ","; stage 3: P + 7, the 50% cut at ⌊7.5⌋;
    # stage 4: no generation. Prefill 44 + 34 + 18 = 96; generated 7 x W = 14.
    # Trained (one step): 4 (P + W) + 2 (P + 6 + W) + (P + 7 + W) + (P + L) = 52 + 38 + 20 + 27 = 137
    counts = run_counts(micro_world, "trapo", ["trapo.prompts_per_step=1"], steps=1)
    assert counts == expect(train=137, prefill=96, gen=14)


def test_hinted_decoding_extra_stream(micro_world, fixed_answers, monkeypatch):
    fixed_answers(False)  # the own-answer pass fails on all 4 prompts: prefill 4P = 44, generated 4W = 8

    def hd(model, hinted, plain, *, eos_id, **_):
        # each row: the sorted digits + end (A tokens); the hinted stream live for 3 of them -> fed 2·3 + 3 = 9
        tok = micro_world[2]
        out = [tok.encode("".join(sorted(tok.decode(p).split(":")[1][:5])), add_special_tokens=False) + [eos_id]
               for p in plain]
        return out, [True] * len(out), 9 * len(out)

    monkeypatch.setattr(hinted_mod, "hinted_decode", hd)
    counts = run_counts(micro_world, "idft", ["idft.data=hinted"])
    # HD: plain stream = prefill 4P, generated 4A; hinted stream = its prompts 4 x (L − 1 + 1 + P) = 108 tokens
    # ("{label}:{prompt}") + the 4 x 3 steps it was live = 120. Trained: 4 accepted / 2 per step -> 2 x 2 x (P + A)
    assert counts == expect(train=68, prefill=88, gen=32, hinted=120)


def test_a_run_logs_every_kind_and_their_total(micro_world, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = resolve_config(world="micro", method="grpo", overrides=[
        "train.max_steps=1", "eval.bootstrap_iters=0", "grpo.prompts_per_step=2", "grpo.group_size=2",
        "grpo.num_iterations=1", "grpo.beta=0.05"])
    final = harness.run.run(cfg, progress=False)
    parts = [final[f"cost/flops_{k}"] for k in KINDS]
    assert final["cost/flops"] == pytest.approx(sum(parts))
    assert final["cost/flops_prefill"] > 0 and final["cost/flops_gen"] > 0 and final["cost/flops_ref"] > 0
    n = sum(p.numel() for p in micro_world[1].parameters())
    assert final["cost/flops_train"] == 6 * n * final["cost/train_tokens"]
    assert final["cost/flops_gen"] == 2 * n * final["cost/gen_tokens"]
    # one step: the reference pass scores exactly the sequences trained (4 rollouts, μ = 1)
    assert final["cost/flops_ref"] == pytest.approx(final["cost/flops_train"] / 3)
    assert math.isfinite(final["cost/flops_old"]) and final["cost/flops_old"] == 0
