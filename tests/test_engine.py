"""The engine: micro-batch invariance, schedule values, non-finite losses, collation masks."""
from __future__ import annotations


import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.config import TrainConfig
from harness.data import Example, TrainData, collate
from harness.engine import Trainer, lr_lambda
from harness.errors import TrainingDiverged
from harness.method import LossOutput


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2))


def examples(n: int = 8) -> list[Example]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        P, R = 3 + i % 3, 2 + (i * 5) % 4            # ragged prompts and responses
        ids = torch.randint(3, 20, (P + R,), generator=g).tolist()
        out.append(Example(ids[:P], ids[P:]))
    return out


def nll(ctx, batch) -> LossOutput:
    return LossOutput(-batch.logp, {"x": 1.0})


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_micro_batching_does_not_change_the_update(reduction):
    ex = examples(8)
    params = []
    for micro in (8, 2):
        model = tiny_model()
        cfg = TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=micro, max_steps=3, warmup_ratio=0.0)
        tr = Trainer(model, 0, cfg)
        for _ in range(3):
            tr.update(ex, nll, None, reduction)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-5)
    assert not torch.allclose(params[0], torch.cat([p.detach().flatten() for p in tiny_model().parameters()]))


def test_token_reduction_is_sum_over_step_divided_by_trained_tokens():
    ex = examples(4)
    model = tiny_model()
    tr = Trainer(model, 0, TrainConfig(micro_batch_size=1, max_steps=1))
    stats = tr.update(ex, nll, None, "token")
    batch = collate(ex, 0)
    # the step updated `model`; the loss it reported was computed with the initial weights
    ref = tiny_model()
    with torch.no_grad():
        logits = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None])[..., 0]
    expected = float((-lp * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["trained_tokens"] == sum(len(e.response_ids) for e in ex)


def test_collate_masks_only_response_tokens():
    b = collate([Example([5, 6, 7], [8, 9]), Example([5], [8, 9, 10])], pad_id=0)
    # row 0: inputs 5 6 7 8 9 -> targets 6 7 8 9; response targets 8,9 at target positions 2,3
    assert b.loss_mask[0].tolist() == [0, 0, 1, 1]
    # row 1: inputs 5 8 9 10 0 -> targets 8 9 10 0; response at target positions 0..2
    assert b.loss_mask[1].tolist() == [1, 1, 1, 0]
    assert b.targets[1, :3].tolist() == [8, 9, 10]


def test_schedule_values_by_hand():
    f = lr_lambda(TrainConfig(max_steps=100, warmup_ratio=0.1, schedule="cosine", min_lr_ratio=0.0))
    assert f(0) == pytest.approx(0.1)        # (0+1)/10 warm-up
    assert f(9) == pytest.approx(1.0)        # (9+1)/10
    assert f(10) == pytest.approx(1.0)       # cosine starts at the peak
    assert f(55) == pytest.approx(0.5)       # halfway through 90 decay steps: (1+cos(pi/2))/2
    assert f(100) == pytest.approx(0.0)
    g = lr_lambda(TrainConfig(max_steps=10, warmup_ratio=0.0, schedule="linear", min_lr_ratio=0.1))
    assert g(5) == pytest.approx(0.1 + 0.9 * 0.5)


def test_non_finite_loss_raises_training_diverged():
    tr = Trainer(tiny_model(), 0, TrainConfig(max_steps=1))

    def bad(ctx, batch):
        return LossOutput(-batch.logp * float("nan"))
    with pytest.raises(TrainingDiverged, match="step 1"):
        tr.update(examples(2), bad, None)


def test_train_data_steps_respect_batch_size_passes_and_cap():
    import numpy as np
    d = TrainData(examples(5), batch_size=2, shuffle=False, passes=2)
    sizes = [len(s) for s in d.steps(32, np.random.default_rng(0))]
    assert sizes == [2, 2, 1, 2, 2, 1]
    d = TrainData(examples(5), batch_size=2, max_steps=2)
    assert len(list(d.steps(32, np.random.default_rng(0)))) == 2


def test_phi_statistics_are_logged():
    tr = Trainer(tiny_model(), 0, TrainConfig(max_steps=1))
    stats = tr.update(examples(4), nll, None)
    assert {"data_phi", "data_phi_lt1", "data_phi_lt3", "data_phi_lt5"} <= set(stats)
    assert 0.0 <= stats["data_phi_lt5"] <= stats["data_phi_lt3"] <= stats["data_phi_lt1"] <= 1.0
