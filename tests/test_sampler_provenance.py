"""Which backend sampled a run's data (issue 26): the run's `sampler` tag, the report's refusal to pool backends,
and the config refusing temperatures vLLM refuses."""
from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from harness.config import resolve_config
from harness.errors import HarnessError
from reports import build
from reports.frame import Frames, _tidy
from reports.samplers import check_samplers


def test_a_run_is_tagged_with_its_sampler(tmp_path, monkeypatch, micro_world):
    from harness.run import run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=1", "train.eval_every=1"])
    run(cfg, progress=False)
    df = mlflow.search_runs(experiment_names=["harness"])
    assert df[df["tags.kind"] == "run"].iloc[0]["tags.sampler"] == "hf"


def _wide(samplers: list[tuple[str | None, str | None]]) -> pd.DataFrame:
    """search_runs' frame of runs with (tag, parameter) sampler values; one arm per run."""
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(samplers))], "status": "FINISHED",
                         "tags.kind": "run", "tags.method": ["sft", "grpo", "tms"][:len(samplers)],
                         "tags.sampler": [t for t, _ in samplers], "params.train.sampler": [p for _, p in samplers]})


def test_the_tag_or_else_the_parameter_names_the_sampler():
    tidy = _tidy(_wide([("vllm", "vllm"), (None, "hf"), (None, None)]))
    assert tidy["sampler"].tolist()[:2] == ["vllm", "hf"] and pd.isna(tidy["sampler"][2])


def test_mixed_backends_are_refused_unless_told():
    same = _tidy(_wide([("hf", "hf"), (None, "hf"), (None, None)]))
    assert check_samplers(same, "x") is None  # an unknown sampler (old runs) does not count as another backend
    mixed = _tidy(_wide([("vllm", "vllm"), ("hf", "hf"), (None, "hf")]))
    with pytest.raises(HarnessError, match=r"^experiment 'x' pools runs sampled by different backends "
                                           r"\(hf: grpo, tms; vllm: sft\).*--mixed-samplers"):
        check_samplers(mixed, "x")
    note = check_samplers(mixed, "x", allow_mixed=True)
    assert note.startswith("Runs sampled by different backends are compared (hf: grpo, tms; vllm: sft)")


def test_the_report_refuses_before_drawing_anything(monkeypatch, tmp_path):
    runs = _tidy(_wide([("vllm", "vllm"), ("hf", "hf")]))
    frames = Frames("x", runs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), runs, pd.DataFrame())
    monkeypatch.setattr(build, "load", lambda experiment, client: frames)
    with pytest.raises(HarnessError, match="--mixed-samplers"):
        build.build_report("x", tmp_path, log_artifacts=False, client=object())
    assert not any(tmp_path.iterdir())


def test_report_flag_reaches_the_builder(monkeypatch):
    from harness.cli import build_parser
    args = build_parser().parse_args(["report", "--mixed-samplers", "--experiment", "x"])
    assert args.mixed_samplers is True


@pytest.mark.parametrize("method", ["grpo", "trapo"])
def test_temperatures_vllm_refuses_are_refused_by_the_config(method):
    with pytest.raises(HarnessError, match=rf"^{method}.temperature=2.5 is above what vLLM samples at \(2"):
        resolve_config(world="micro", method=method, overrides=[f"{method}.temperature=2.5", "train.sampler=vllm"])
    resolve_config(world="micro", method=method, overrides=[f"{method}.temperature=2.0", "train.sampler=vllm"])
    resolve_config(world="micro", method=method, overrides=[f"{method}.temperature=2.5"])  # transformers samples it
