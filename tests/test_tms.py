"""TMS: loss by hand, checkpoint spacing, the α-mixture, draws up front, the reset to θ0, snapshots, end to end."""
from __future__ import annotations

import math
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from harness.context import Context
from harness.data import Example, TrainData, collate
from methods._tms_mixture import checkpoint_steps, checkpoint_weights, draw_plan, mix
from methods.tms import TMS, TMSConfig
from method_harness import build, train


def test_loss_is_per_token_nll_by_hand():
    # prompt [5, 6] + response [7, 8] and prompt [5] + response [9]: target coordinates [B=2, T-1=3]
    batch = collate([Example([5, 6], [7, 8]), Example([5], [9])], pad_id=0)
    assert batch.loss_mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    batch.logp = torch.log(torch.tensor([[0.9, 0.5, 0.25], [0.125, 0.3, 0.3]]))
    out = TMS(TMSConfig()).loss(None, batch)
    # token_loss = −log p everywhere; the engine multiplies by loss_mask
    assert torch.allclose(out.token_loss * batch.loss_mask,
                          torch.tensor([[0.0, math.log(2), math.log(4)], [math.log(8), 0.0, 0.0]]))
    # masked mean over the 3 trained tokens: (ln 2 + ln 4 + ln 8) / 3 = 6 ln 2 / 3 = 2 ln 2 ≈ 1.3863
    assert abs(out.stats["nll"] - 2 * math.log(2)) < 1e-6


def test_checkpoint_steps_are_even_and_exclude_theta0():
    assert checkpoint_steps(150, 10) == [15, 30, 45, 60, 75, 90, 105, 120, 135, 150]
    assert checkpoint_steps(7, 3) == [3, 5, 7]        # ceil(7/3)=3, ceil(14/3)=5, ceil(21/3)=7
    assert checkpoint_steps(2, 10) == [1, 2]          # more checkpoints than steps: duplicates merged
    assert checkpoint_steps(2, 2) == [1, 2]


def test_checkpoint_weights_by_hand():
    assert np.allclose(checkpoint_weights(4, "uniform", 0.0), [0.25] * 4)
    assert np.allclose(checkpoint_weights(3, "early_first", 0.0), [3 / 6, 2 / 6, 1 / 6])  # ∝ 3, 2, 1
    # p = 0.5: 0.5·[3, 2, 1] + 0.5 = [2, 1.5, 1], sum 4.5
    assert np.allclose(checkpoint_weights(3, "early_first", 0.5), [2 / 4.5, 1.5 / 4.5, 1 / 4.5])
    assert np.allclose(checkpoint_weights(3, "early_first", 1.0), [1 / 3] * 3)


def test_mixture_proportion_and_alignment_with_fixed_rng():
    N, T = 400, 4
    expert = [Example([i], [0], source="expert") for i in range(N)]
    answers = [[Example([i], [t], source=f"ckpt{t + 1}") for i in range(N)] for t in range(T)]
    rng = np.random.default_rng(0)
    epoch = mix(expert, answers, draw_plan(N, 0.25, checkpoint_weights(T, "uniform", 0.0), rng))
    assert len(epoch) == N
    assert all(e.prompt_ids == [i] for i, e in enumerate(epoch))   # one example per prompt, its own answer
    n_expert = sum(e.source == "expert" for e in epoch)
    assert 80 <= n_expert <= 120                                   # Binomial(400, 0.25): 100 ± 8.7
    counts = [sum(e.source == f"ckpt{t + 1}" for e in epoch) for t in range(T)]
    assert all(45 <= c <= 105 for c in counts)                     # ≈ 300 / 4 = 75 each
    again = mix(expert, answers, draw_plan(N, 0.25, checkpoint_weights(T, "uniform", 0.0), rng))
    assert [e.source for e in again] != [e.source for e in epoch]  # resampled every epoch
    assert all(e.source == "expert" for e in mix(expert, answers, draw_plan(N, 1.0, np.full(T, 0.25), rng)))
    assert not any(e.source == "expert" for e in mix(expert, answers, draw_plan(N, 0.0, np.full(T, 0.25), rng)))


def test_student_starts_from_base_checkpoints_deleted_and_trains(micro_world):
    torch.set_num_threads(1)
    _, base_model, _ = micro_world
    ctx, method, trainer = build(micro_world, "tms", ["tms.checkpoints=2", "tms.teacher_steps=2",
                                                      "tms.reuse_teacher=false"])
    saved, loaded = [], []
    save, load = ctx.save_checkpoint, ctx.load_checkpoint

    def spy_save(name, *args):
        assert not any(p.exists() for p in saved), "a snapshot is harvested and deleted before the next is written"
        saved.append(save(name, *args))
        return saved[-1]

    def spy_load(path):
        assert all(r() is None for r in loaded), "only one checkpoint model may be alive at a time"
        model = load(path)
        loaded.append(weakref.ref(model))
        return model
    ctx.save_checkpoint, ctx.load_checkpoint = spy_save, spy_load

    data = method.data(ctx, 0)
    logged = {k: v for _, stats in ctx.logged for k, v in stats.items()}
    assert [s for s, st in ctx.logged if "teacher/loss" in st] == [1, 2]    # the teacher really trained
    assert logged["train/teacher_steps"] == 2 and logged["train/checkpoints"] == 2
    assert 0.0 <= logged["train/mixture_acc"] <= 1.0
    # student = θ0: weights equal the base exactly, optimizer and schedule fresh
    base = base_model.state_dict()
    assert all(torch.equal(p, base[n]) for n, p in ctx.policy.state_dict().items())
    assert len(trainer.opt.state) == 0 and trainer.sched.last_epoch == 0
    # checkpoints: two saved, each deleted after sampling; the scratch folder is empty
    assert len(saved) == 2 and len(loaded) == 2
    assert not any(p.exists() for p in saved) and list(ctx._scratch.iterdir()) == []
    # one example per training prompt, drawn from expert labels and both checkpoints
    assert len(data.examples) == len(ctx.world.train_items)
    assert {e.source for e in data.examples} <= {"expert", "ckpt1", "ckpt2"}
    assert 0.0 < logged["train/expert_frac"] < 0.5

    stats = train(ctx, method, trainer, 2)
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats)
    assert any(not torch.equal(p, base[n]) for n, p in ctx.policy.state_dict().items())
    ctx.close()


@pytest.mark.parametrize("steps", [3, 4, 6, 7])
def test_batches_drawn_up_front_match_cycling_the_data_step_by_step(steps):
    # 5 examples in batches of 2: 3 batches per pass; 3 and 6 steps end a pass, 4 and 7 stop inside one
    examples = [Example([i], [0]) for i in range(5)]
    lazy_rng, rng = np.random.default_rng(0), np.random.default_rng(0)
    lazy = []
    while len(lazy) < steps:  # how the teacher run used to draw its batches while training
        for batch in TrainData(examples).steps(2, lazy_rng):
            lazy.append(batch)
            if len(lazy) == steps:
                break
    ctx = SimpleNamespace(run_cfg=SimpleNamespace(train=SimpleNamespace(batch_size=2)), rng=rng)
    drawn = Context.draw_batches(ctx, TrainData(examples), steps)
    assert [[e.prompt_ids for e in b] for b in drawn] == [[e.prompt_ids for e in b] for b in lazy]
    assert rng.random() == lazy_rng.random()  # the rng is left where it was: later draws are unchanged


def test_snapshots_in_bf16_under_scratch_dir_and_teacher_lr(micro_world, tmp_path):
    ctx, method, trainer = build(micro_world, "tms", ["tms.checkpoints=2", "tms.teacher_steps=2", "train.lr=1e-4",
                                                      "tms.teacher_lr=5e-3", f"tms.scratch_dir={tmp_path / 'snaps'}",
                                                      "tms.reuse_teacher=false"])
    dtypes, save = [], ctx.save_checkpoint

    def spy_save(name, *args):
        path = save(name, *args)
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            dtypes.append({f.get_tensor(k).dtype for k in f.keys()})
        assert path.parent.parent == tmp_path / "snaps"
        return path
    ctx.save_checkpoint = spy_save
    method.data(ctx, 0)
    assert dtypes == [{torch.bfloat16}] * 2
    # the teacher trains at its own peak (2 steps: warm-up step 1 reaches it, the decay starts from it at step 2);
    # the student is reset to the run's
    assert [st["teacher/lr"] for _, st in ctx.logged if "teacher/lr" in st] == [5e-3, 5e-3]
    assert trainer.sched.base_lrs == [1e-4]
    ctx.close()
    assert list((tmp_path / "snaps").iterdir()) == []


def _student(micro_world, lr: float, reuse: bool) -> dict:
    """The mixture, teacher logs, cost and final weights of 2 student steps at `lr` (teacher at its own rate)."""
    ctx, method, trainer = build(micro_world, "tms", ["tms.checkpoints=2", "tms.teacher_steps=3", "train.seed=7",
                                                      "tms.teacher_lr=2e-3", f"train.lr={lr}",
                                                      f"tms.reuse_teacher={str(reuse).lower()}"])
    data = method.data(ctx, 0)
    train(ctx, method, trainer, 2)
    logged = {k: v for _, st in ctx.logged for k, v in st.items()}
    out = {"mixture": [(e.prompt_ids, e.response_ids, e.source) for e in data.examples],
           "teacher": [(s, st) for s, st in ctx.logged if any(k.startswith("teacher/") for k in st)],
           "cost": dict(trainer.cost.tokens), "reused": logged["train/teacher_reused"],
           "params": torch.cat([p.detach().reshape(-1) for p in ctx.policy.parameters()])}
    ctx.close()
    return out


def test_teacher_phase_is_reused_across_student_rates_with_identical_results(micro_world):
    first = _student(micro_world, 1e-3, reuse=True)     # computes the teacher phase and stores it
    reused = _student(micro_world, 3e-4, reuse=True)    # another student rate: the same teacher, read back
    fresh = _student(micro_world, 3e-4, reuse=False)    # the same run computing its teacher again
    assert first["reused"] == 0.0 and reused["reused"] == 1.0 and fresh["reused"] == 0.0
    assert reused["mixture"] == fresh["mixture"] == first["mixture"]
    assert reused["teacher"] == fresh["teacher"] and len(fresh["teacher"]) == 3
    assert reused["cost"] == fresh["cost"] and fresh["cost"]["teacher"] > 0 and fresh["cost"]["gen"] > 0
    assert torch.equal(reused["params"], fresh["params"])
    assert not torch.equal(first["params"], fresh["params"])  # the student rate still matters
