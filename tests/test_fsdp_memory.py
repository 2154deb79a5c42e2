"""Rank 0's evaluation memory under FSDP (issue 26): bf16 evaluation copies, and the dry-run's estimate."""
from __future__ import annotations

import pytest
import torch

from harness import fsdp
from harness.config import TrainConfig

GiB = 2**30
N7B = 7_615_616_512  # Qwen2.5-Math-7B's parameters (config.json, untied head)


def test_the_evaluation_copies_take_the_configured_dtypes():
    assert fsdp.eval_dtypes(TrainConfig()) == ("float32", "float32")
    cfg = TrainConfig(fsdp_eval_dtype="bfloat16", frozen_dtype="bfloat16")
    assert fsdp.eval_dtypes(cfg) == ("bfloat16", "bfloat16")
    loads = []
    twin = fsdp.Twin(lambda dtype: loads.append(dtype) or torch.nn.Linear(2, 2).to(getattr(torch, dtype)),
                     *fsdp.eval_dtypes(cfg))
    twin.refresh({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, step=3)  # the gathered fp32 state
    assert twin.policy.weight.dtype == torch.bfloat16 and loads == ["bfloat16"] and twin.base is not None


def test_the_7b_preset_on_four_80gb_gpus_fits_only_with_bf16_copies():
    fp32 = TrainConfig(frozen_dtype="bfloat16")  # the 7B preset's frozen base
    bf16 = TrainConfig(frozen_dtype="bfloat16", fsdp_eval_dtype="bfloat16")
    parts = fsdp.eval_memory(N7B, 4, fp32)
    # shards: 16 B/param of fp32 weights, gradients, two AdamW moments + 2 B/param of bf16 base, over 4 ranks
    assert parts == {"shards": N7B * 18 / 4, "policy copy": N7B * 4, "base copy": N7B * 2}
    assert sum(fsdp.eval_memory(N7B, 4, bf16).values()) == N7B * (18 / 4 + 2 + 2)  # ~60 GiB
    h100 = 85_520_809_984  # torch's total_memory of an H100 80GB HBM3
    assert "does NOT fit" in fsdp.eval_memory_line(N7B, 4, fp32, h100, "H100")
    line = fsdp.eval_memory_line(N7B, 4, bf16, h100, "H100")
    assert line.startswith("fsdp evaluation on rank 0 of 4: ~60.3 GiB = shards 31.9 GiB + policy copy 14.2 GiB "
                           "(bfloat16) + base copy 14.2 GiB (bfloat16)") and line.endswith("fits the 79.6 GiB of H100")
    assert fsdp.eval_memory_line(N7B, 4, bf16, None, "").endswith("no GPU here to compare with")


def test_the_dry_run_counts_the_saved_models_parameters(tmp_path, monkeypatch):
    from real_fixtures import build_tiny_model
    from transformers import AutoModelForCausalLM
    folder = build_tiny_model(tmp_path / "m", "qwen2")
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = fsdp.dry_run_line(TrainConfig(parallel="fsdp"), str(folder))
    assert line.startswith(f"fsdp evaluation on rank 0 of 2: ~{n * (20 / 2 + 8) / GiB:.1f} GiB")
