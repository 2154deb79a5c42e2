"""End to end on the micro world: a run logs every metric and ends FINISHED; failures end FAILED; bad input exits 2."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch

from harness.cli import main
from harness.config import resolve_config
from harness.errors import HarnessError, TrainingDiverged
from harness.run import run
from harness.method import LossOutput
from methods.sft import SFT

REQUIRED = ["target_gain", "nontarget_drop", "target_gain_lo", "target_gain_hi", "nontarget_drop_lo",
            "nontarget_drop_hi", "pld", "pld_drift", "kl_to_base", "cost/train_tokens", "cost/gen_tokens",
            "cost/train_s", "cost/gen_s", "cost/eval_s", "cost/flops", "train/loss", "train/data_phi"]


@pytest.fixture
def store(tmp_path, monkeypatch, micro_world):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def runs(experiment: str = "harness"):
    return mlflow.search_runs(experiment_names=[experiment])


def test_micro_sft_run_logs_every_metric_and_finishes(store, micro_world):
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=4", "train.eval_every=2",
                                                                    "train.lr=3e-3"])
    final = run(cfg, progress=False)
    df = runs()
    r = df[df["tags.kind"] == "run"].iloc[0]
    assert r.status == "FINISHED"
    for k in REQUIRED:
        assert math.isfinite(r[f"metrics.{k}"]), k
    world = micro_world[0]
    for t in world.cfg.tasks:
        assert f"metrics.acc/{t}" in df.columns
    for t in world.nontarget:
        assert f"metrics.drop/{t}" in df.columns
    # gain/drop are logged at every evaluation point (0, 2, 4), not only at the end
    hist = mlflow.MlflowClient().get_metric_history(r.run_id, "target_gain")
    assert sorted({h.step for h in hist}) == [0, 2, 4]
    assert r["tags.method"] == "sft" and r["tags.base_checkpoint"] and r["tags.git_commit"]
    assert final["target_gain_lo"] <= final["target_gain"] <= final["target_gain_hi"]
    # the base is logged once as its own run, with the NLL of teacher labels vs its own answers
    base = df[df["tags.kind"] == "base"].iloc[0]
    assert base["metrics.base/label_nll_token"] > base["metrics.base/own_nll_token"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.run_id)}
    assert {"config.json", "eval"} <= arts


def test_a_run_that_raises_ends_failed_with_the_reason(store, monkeypatch):
    def boom(self, ctx, batch):
        raise RuntimeError("loss exploded on purpose")
    monkeypatch.setattr(SFT, "loss", boom)
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=2"])
    with pytest.raises(RuntimeError):
        run(cfg, progress=False)
    r = runs().query("`tags.kind` == 'run'").iloc[0]
    assert r.status == "FAILED"
    assert "loss exploded on purpose" in r["tags.failure_reason"]


def test_a_nan_loss_stops_the_run_as_failed_naming_the_step(store, monkeypatch):
    def nan_loss(self, ctx, batch):
        return LossOutput(-batch.logp * (float("nan") if ctx.step >= 1 else 1.0))
    monkeypatch.setattr(SFT, "loss", nan_loss)
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=3"])
    with pytest.raises(TrainingDiverged):
        run(cfg, progress=False)
    r = runs().query("`tags.kind` == 'run'").iloc[0]
    assert r.status == "FAILED"
    assert "non-finite loss at step 2" in r["tags.failure_reason"]


@pytest.mark.parametrize("argv,needle", [
    (["run", "--world", "micro", "--method", "sfd"], "Did you mean 'sft'"),
    (["run", "--world", "micro", "train.lr"], "malformed override"),
    (["run", "--world", "micro", "world.base_model=/nonexistent/model"], "does not exist"),
    (["run", "--world", "micro", "world.n_eval=0"], "empty evaluation split"),
    (["sweep", "--spec", "/nonexistent.yaml"], "does not exist"),
    (["sweep", "world=micro", "trails=3"], "Did you mean 'trials'"),
])
def test_bad_input_is_one_clear_line_and_exit_2(argv, needle, store, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_model_loading_from_a_saved_folder_and_its_errors(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.modeling import build_char_tokenizer, load_model
    tok = build_char_tokenizer("abc")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model(str(tmp_path / "m"))
    assert ltok.decode(ltok.encode("abca", add_special_tokens=False)) == "abca"
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "m" / "model.safetensors").exists()
    with pytest.raises(HarnessError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    ltok.pad_token = None
    ltok.save_pretrained(tmp_path / "m")
    with pytest.raises(HarnessError, match="no pad token"):
        load_model(str(tmp_path / "m"))


def test_same_seed_same_config_gives_identical_metrics(store):
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=3", "train.eval_every=3"])
    a = run(cfg, progress=False)
    b = run(cfg, progress=False)
    timing = {k for k in a if k.startswith("cost/") and k.endswith(("_s", "wall_s"))}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def test_a_run_whose_method_has_no_data_ends_at_the_base_with_its_metrics(store, micro_world, monkeypatch):
    """Self-SFT with no verified sample trains no step: the run still reports gain and drop (the base's, 0), so a
    sweep's trial reads them instead of failing on a missing `target_gain`."""
    from methods.sft import SFT
    monkeypatch.setattr(SFT, "data", lambda self, ctx, phase: None)
    cfg = resolve_config(world="micro", method="sft", overrides=["train.max_steps=4", "train.eval_every=2"])
    final = run(cfg, progress=False)
    assert final["steps"] == 0
    assert final["target_gain"] == 0 and final["nontarget_drop"] == 0 and final["val/target_gain"] == 0


def test_a_finished_run_leaves_no_model_alive(store):
    """A sweep worker runs many runs in one process: each run's policy, base and copies must die with it (a run's
    context once stayed reachable through rank 0's evaluation copies, holding a SmolLM2-sized model per run)."""
    import gc

    from transformers import PreTrainedModel

    def alive() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}

    before = alive()  # whatever other tests' fixtures hold
    run(resolve_config(world="micro", method="sft", overrides=["train.max_steps=2", "train.eval_every=2"]),
        progress=False)
    assert alive() - before == set()
