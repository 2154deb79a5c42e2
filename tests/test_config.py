"""Config layering, validation errors, and that every shipped preset validates."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.settings_input import parse_overrides
from harness.errors import HarnessError


def test_precedence_defaults_world_preset_file_cli(tmp_path: Path):
    cfg = resolve_config(world="micro")
    assert cfg.train.max_steps == 8                      # micro world preset beats the default 150
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  max_steps: 5\n  lr: 0.001\nsft:\n  kl_beta: 0.5\n")
    cfg = resolve_config(world="micro", preset=f)
    assert (cfg.train.max_steps, cfg.train.lr, cfg.method_args.kl_beta) == (5, 0.001, 0.5)
    cfg = resolve_config(world="micro", preset=f, overrides=["train.max_steps=7", "sft.kl_beta=0"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.method_args.kl_beta) == (7, 0.001, 0.0)


def test_values_parse_as_yaml_scalars():
    assert parse_overrides(["train.lr=1e-4", "a.b=true", "w.tasks=[sort,rev]", "x=3"]) == {
        "train": {"lr": 1e-4}, "a": {"b": True}, "w": {"tasks": ["sort", "rev"]}, "x": 3}


@pytest.mark.parametrize("overrides,needle", [
    (["train.lrr=1"], "unknown config key 'train.lrr'. Did you mean 'train.lr'?"),
    (["train.lr=abc"], "config key 'train.lr'"),
    (["sft.kl_bet=1"], "Did you mean 'sft.kl_beta'?"),
    (["world.teacher_style=loud"], "world.teacher_style"),
    (["trainlr"], "malformed override"),
    (["train.max_steps=0"], "train.max_steps"),
])
def test_bad_settings_name_the_key(overrides, needle):
    with pytest.raises(HarnessError, match=None) as e:
        resolve_config(world="micro", overrides=overrides)
    assert needle in str(e.value)


def test_unknown_world_method_and_task_suggest_names():
    with pytest.raises(HarnessError, match="Did you mean 'micro'"):
        resolve_config(world="mikro")
    with pytest.raises(HarnessError, match="Did you mean 'sft'"):
        resolve_config(method="sfd")
    with pytest.raises(HarnessError, match="Did you mean 'sort'"):
        resolve_config(world="micro", overrides=["world.target=sortt"])


def test_missing_or_malformed_preset_file(tmp_path: Path):
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_config(preset=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(HarnessError, match="mapping"):
        resolve_config(preset=bad)


def test_other_methods_sections_are_ignored_for_shared_presets():
    cfg = resolve_config(world="micro", method="sft", overrides={"grpo": {"beta": 0.1}})
    assert cfg.method == "sft"


def test_every_method_default_config_validates():
    from harness.method import get_method, method_names
    for name in method_names():
        cfg = resolve_config(world="micro", method=name)
        assert type(cfg.method_args) is get_method(name).Config
        assert cfg.model_dump()["method_args"] == cfg.method_args.model_dump()


def test_a_device_torch_cannot_use_is_one_line_before_anything_runs():
    import torch

    from harness.errors import HarnessError
    from harness.modeling import check_device

    check_device("cpu")
    with pytest.raises(HarnessError, match="not a torch device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match=r"sees no CUDA GPU .*set train.device=cpu"):
            check_device("cuda")


def test_a_hub_id_not_in_the_cache_is_one_line_and_never_downloads(tmp_path, monkeypatch):
    import time

    from harness.errors import HarnessError
    from harness.modeling import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    start = time.perf_counter()
    with pytest.raises(HarnessError, match="not in the local Hugging Face cache; run `harness fetch"):
        load_model("nobody/no-such-model")
    assert time.perf_counter() - start < 10  # local lookups only: no network retries
