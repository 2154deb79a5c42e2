"""One run config: the method's settings live and are validated inside RunConfig, its JSON is the whole run (the
isolated job file), and a sweep's per-method and per-arm overrides land in it."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from harness.config import RunConfig, resolve_config
from harness.errors import HarnessError
from harness.isolated import Job, write_job
from harness.method import get_method, method_names


@pytest.mark.parametrize("name", method_names())
def test_the_json_of_every_method_s_run_config_reads_back_equal(name):
    smoke = [f"{name}.{k}={v}" for k, v in get_method(name).smoke.items()]
    cfg = resolve_config(world="micro", method=name, overrides=["train.seed=3", *smoke])
    back = RunConfig.model_validate_json(cfg.model_dump_json())
    assert back == cfg
    assert type(back.method_args) is get_method(name).Config
    assert back.model_dump(mode="json") == cfg.model_dump(mode="json")


def test_the_isolated_job_file_is_the_run_config_s_json(tmp_path):
    cfg = resolve_config(world="micro", method="self_sft", overrides=["self_sft.samples=2", "train.lr=3e-4"])
    path = write_job(tmp_path / "run.json", cfg, "parent123", {"trial": "4"})
    job = Job.model_validate_json(path.read_text())
    assert (job.run, job.parent_run_id, job.tags) == (cfg, "parent123", {"trial": "4"})
    assert job.run.method_args.samples == 2 and job.run.train.lr == 3e-4


def test_method_settings_are_checked_against_the_named_method():
    assert RunConfig(method="sft", method_args={"kl_beta": 0.5}).method_args.kl_beta == 0.5
    assert RunConfig(method="sft").method_args == get_method("sft").Config()  # no settings: the method's defaults
    with pytest.raises(ValidationError) as e:
        RunConfig(method="grpo", method_args={"kl_beta": 0.5})  # SFT's key, not GRPO's
    assert [err["loc"] for err in e.value.errors()] == [("method_args", "kl_beta")]
    with pytest.raises(HarnessError, match="Did you mean 'sft'"):
        RunConfig(method="sfd")
    cfg = RunConfig(method="sft")
    cfg.method_args = {"kl_beta": 0.25}  # assignment is validated too
    assert type(cfg.method_args) is get_method("sft").Config and cfg.method_args.kl_beta == 0.25


def test_a_run_key_error_is_reported_before_a_method_key_error():
    with pytest.raises(HarnessError, match="'train.lr'"):
        resolve_config(world="micro", overrides=["sft.kl_bet=1", "train.lr=-1"])
    with pytest.raises(HarnessError, match="unknown config key 'sft.kl_bet'"):
        resolve_config(world="micro", overrides=["sft.kl_bet=1"])


def test_sweep_overrides_and_variant_arms_land_in_the_method_s_settings():
    from sweeps.spec import arm_method, arm_overrides, load_spec

    spec = load_spec(None, ["world=micro"], overrides={"self_sft": {"samples": 2}, "onpolicy_sft": {"samples": 3}},
                     methods=["sft", "self_sft", "sft@mild"])
    run_cfg = lambda arm: resolve_config(world=spec.world, method=arm_method(spec, arm),  # noqa: E731
                                         overrides=arm_overrides(spec, arm))
    assert run_cfg("self_sft").method_args.samples == 2
    mild = run_cfg("sft@mild")
    assert (mild.method, mild.world.teacher_style) == ("sft", "mild")
    assert mild.method_args == get_method("sft").Config()
    hinted = load_spec(None, ["world=micro"], methods=["idft@hinted"],
                       variants={"idft@hinted": {"method": "idft", "overrides": {"idft": {"data": "hinted"}}}})
    cfg = resolve_config(world=hinted.world, method="idft", overrides=arm_overrides(hinted, "idft@hinted"))
    assert cfg.method_args.data == "hinted"
