"""The evaluation of record: a saved checkpoint scored by lm-eval (HFLM) in a subprocess agrees with the in-run
Evaluator example by example, on both splits, for a generate_until task (gsm8k) and a loglikelihood one (arc_easy)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from real_fixtures import build_tiny_model, teach, write_task_data

SIZES = {"n_train": 8, "n_heldout": 4, "n_val": 4, "n_eval": 6, "n_val_nontarget": 4, "n_eval_nontarget": 6}


def _preset(model: str, data: dict) -> dict:
    return {"world": {"kind": "real", "name": "tiny-record", "base_model": model, "chat_template": True,
                      "target": {"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                                 "metric": "exact_match", "max_gen_toks": 12},
                      "retention": [{"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"}],
                      "max_new_tokens": 10, **SIZES}}


@pytest.fixture(scope="module")
def record_env(tmp_path_factory):
    """(world, base model, tokenizer, checkpoint folder): a tiny Qwen2 base that answers some eval items right."""
    from harness.config import resolve_config
    from harness.modeling import load_model
    from harness.world import build_world

    root = tmp_path_factory.mktemp("record")
    data = write_task_data(root / "data")
    # Every other gsm8k doc gets the answer 7 and the base is taught to answer 7 and to pick "wind" (the gold of
    # every renewable-resource question): both the generated and the multiple-choice correctness have ones and
    # zeros to agree on.
    rows = [json.loads(line) for line in open(data["gsm8k"]["test"])]
    for r in rows[::2]:
        r["answer"] = r["answer"].rsplit("####", 1)[0] + "#### 7"
    Path(data["gsm8k"]["test"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        model_dir = build_tiny_model(root / "qwen2", "qwen2")
        preset = root / "preset.yaml"
        preset.write_text(yaml.safe_dump(_preset(str(model_dir), data)))
        cfg = resolve_config(preset=preset, overrides=[])
        world = build_world(cfg.world)
        prompts, answers = [], []
        for sp in ("val", "eval"):
            for t in world.tasks:
                for i in world.doc_ids[sp][t]:
                    prompts.append(world.real[t].prompt(world._docs[t][i]))
                    # with a chat template lm-eval drops the target delimiter: the continuation is "wind"
                    answers.append("The answer is 7." if t == "gsm8k" else "wind")
        teach(model_dir, prompts, answers, steps=20)
        model, tok = load_model(world.base_path())
        ckpt = root / "ckpt"
        model.save_pretrained(ckpt)  # as a run saves its checkpoints: weights only, the base's tokenizer
        yield world, model, tok, ckpt


def test_record_eval_agrees_with_the_in_run_evaluator(record_env, tmp_path, monkeypatch):
    import lm_eval.evaluator

    from harness.evaluation import Evaluator
    from harness.record_eval import SAMPLES_NAME, record_eval

    world, model, tok, ckpt = record_env
    logged = {}
    real_evaluate = lm_eval.evaluator.evaluate

    def spy(*a, **kw):  # keep the in-run run's logged samples: the log-likelihoods are compared below
        out = real_evaluate(*a, **kw)
        logged.update(out["samples"])
        return out

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    live = Evaluator(world, tok, batch_size=16).evaluate(model)
    rec = record_eval(world, ckpt, backend="hf", out_dir=tmp_path, batch_size=16, timeout_s=300)

    for sp in ("val", "eval"):
        for t in world.tasks:
            assert rec[sp].responses[t] == live[sp].responses[t], (sp, t)
            np.testing.assert_array_equal(rec[sp].correct[t], live[sp].correct[t])
    both = {t: np.concatenate([live[sp].correct[t] for sp in ("val", "eval")]) for t in world.tasks}
    assert all(0 < c.sum() < len(c) for c in both.values()), both  # ones and zeros on both tasks
    # Multiple choice: every option's log-likelihood (and is-greedy flag) is HFLM's, to float32 precision.
    record = json.loads((tmp_path / SAMPLES_NAME).read_text())["samples"]["harness_real_arc_easy"]
    theirs = {s["doc_id"]: s["filtered_resps"] for s in record}
    for s in logged["harness_real_arc_easy"]:
        ours = [(float(ll), bool(g)) for ll, g in s["filtered_resps"]]
        assert [g for _, g in ours] == [bool(g) for _, g in theirs[s["doc_id"]]]
        np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs[s["doc_id"]]], rtol=1e-5, atol=1e-4)


def test_vllm_spec_and_command(record_env, tmp_path):
    from harness.record_eval import build_spec, command

    world, _, _, ckpt = record_env
    spec = build_spec(world, ckpt, backend="vllm", out_dir=tmp_path, extra_model_args={"gpu_memory_utilization": 0.5})
    args = spec["model_args"]
    assert spec["model"] == "vllm" and spec["batch_size"] == "auto" and spec["device"] is None
    assert args["pretrained"] == str(ckpt.resolve()) and args["tokenizer"] == world.base_path()  # ckpt has none
    assert args["dtype"] == "auto" and args["gpu_memory_utilization"] == 0.5 and args["add_bos_token"] is False
    assert args["max_model_len"] % 256 == 0 and 0 < args["max_model_len"] <= 1024  # within the tiny model's 1024
    assert spec["tasks"] == ["harness_real_gsm8k", "harness_real_arc_easy"] and not spec["include_defaults"]
    assert all((Path(f) / f"{n}.yaml").is_file() for f, n in zip(spec["include_path"], spec["tasks"]))
    for t in world.tasks:
        assert spec["samples"][f"harness_real_{t}"] == sorted(world.doc_ids["val"][t] + world.doc_ids["eval"][t])
    assert spec["apply_chat_template"] is True and spec["system_instruction"] is None
    assert spec["fewshot_as_multiturn"] is False
    assert command(tmp_path / "s.json") == [sys.executable, "-m", "harness.record_eval", str(tmp_path / "s.json")]
    hf = build_spec(world, ckpt, backend="hf", extra_model_args={"max_length": 512})
    assert hf["device"] == "cpu" and hf["model_args"]["max_length"] == 512 and "max_model_len" not in hf["model_args"]


def test_failures_are_one_line_errors(record_env, tmp_path, monkeypatch):
    from benchmarks.world import ToyWorld, WorldConfig
    from harness.config import world_presets
    from harness import record_eval as rec_mod
    from harness.errors import HarnessError

    world, _, _, ckpt = record_env
    # vLLM is not installed here: the subprocess fails, and its last stderr lines make the message.
    with pytest.raises(HarnessError, match=r"evaluation of record failed \(vllm, exit 1\): .*vllm") as e:
        rec_mod.record_eval(world, ckpt, backend="vllm", out_dir=tmp_path / "vllm", timeout_s=120)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(rec_mod, "command", lambda spec: [sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(HarnessError, match="timed out after 1 s"):
        rec_mod.record_eval(world, ckpt, out_dir=tmp_path / "slow", timeout_s=1)
    with pytest.raises(HarnessError, match="unknown evaluation backend 'sglang'"):
        rec_mod.build_spec(world, ckpt, backend="sglang")
    with pytest.raises(HarnessError, match="no config.json"):
        rec_mod.build_spec(world, tmp_path)
    toy = ToyWorld(WorldConfig(name="micro", **world_presets("toy")["micro"]["world"]))
    with pytest.raises(HarnessError, match="evaluation of record is for real worlds"):
        rec_mod.record_eval(toy, ckpt)


# --- the GPU path (issue 26): memory, the child's environment, the run's settings --------------------------------
GiB = 2**30


def vllm_refuses(spec: dict, free: int, total: int) -> bool:
    """vLLM 0.33's start-up check (vllm/v1/worker/utils.py): free memory below gpu_memory_utilization x total."""
    return free < spec["model_args"]["gpu_memory_utilization"] * total


def test_vllm_memory_is_sized_from_what_is_free_beside_the_trainer(record_env, tmp_path, monkeypatch):
    from harness import record_eval as rec_mod
    from harness.errors import HarnessError
    world, _, _, ckpt = record_env
    free, total, emptied = 30 * GiB, 80 * GiB, []  # the parent holds ~50 GB: policy, AdamW state, base, engine
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, total))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    spec = rec_mod.build_spec(world, ckpt, backend="vllm", out_dir=tmp_path)
    # (30 - 2 GiB for the child's own context) / 80 = 0.35, rounded down to the hundredth
    assert spec["model_args"]["gpu_memory_utilization"] == 0.35 and emptied
    assert not vllm_refuses(spec, free - rec_mod.CHILD_CONTEXT_BYTES, total)
    assert vllm_refuses({"model_args": {"gpu_memory_utilization": 0.8}}, free, total)  # lm-eval's default would
    ok = rec_mod.build_spec(world, ckpt, backend="vllm", out_dir=tmp_path, extra_model_args={"gpu_memory_utilization": 0.3})
    assert ok["model_args"]["gpu_memory_utilization"] == 0.3
    with pytest.raises(HarnessError, match=r"gpu_memory_utilization=0.5 .*30.0 GiB of 80.0 GiB is free.*lower it to 0.35"):
        rec_mod.build_spec(world, ckpt, backend="vllm", extra_model_args={"gpu_memory_utilization": 0.5})
    free = 5 * GiB
    with pytest.raises(HarnessError, match="only 5.0 GiB of 80.0 GiB is free.*eval.record_backend=hf"):
        rec_mod.build_spec(world, ckpt, backend="vllm")


def test_the_child_runs_as_one_process_whatever_launched_the_parent(record_env, tmp_path, monkeypatch):
    from harness import record_eval as rec_mod
    from harness.errors import HarnessError
    world, _, _, ckpt = record_env
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "ROLE_RANK": "0", "ROLE_NAME": "default", "ROLE_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "TORCHELASTIC_RESTART_COUNT": "0",
                "GROUP_WORLD_SIZE": "1"}
    for k, v in launcher.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HARNESS_KEEP_ME", "yes")
    dump = tmp_path / "env.json"
    monkeypatch.setattr(rec_mod, "command", lambda spec: [sys.executable, "-c",
                        f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"])
    with pytest.raises(HarnessError, match="evaluation of record failed"):  # the stand-in writes no samples
        rec_mod.record_eval(world, ckpt, out_dir=tmp_path / "out")
    env = json.loads(dump.read_text())
    assert not set(launcher) & set(env) and env["HARNESS_KEEP_ME"] == "yes" and env["HF_HUB_OFFLINE"] == "1"


def test_the_run_passes_its_model_args_and_a_timeout(monkeypatch, tmp_path):
    import inspect
    from types import SimpleNamespace
    from harness import record_eval as rec_mod
    from harness.config import EvalConfig
    from harness.run_hooks import record_checkpoint
    assert inspect.signature(rec_mod.record_eval).parameters["timeout_s"].default == rec_mod.DEFAULT_TIMEOUT_S
    assert EvalConfig().record_timeout_s == 10800 and EvalConfig().record_model_args == {}
    seen = {}
    monkeypatch.setattr(rec_mod, "record_eval", lambda world, path, backend, **kw: seen.update(kw, backend=backend))
    monkeypatch.setattr(rec_mod, "record_metrics", lambda res, in_run: {})
    cfg = SimpleNamespace(eval=EvalConfig(record_backend="vllm", record_model_args={"max_model_len": 2048},
                                          record_timeout_s=600), train=SimpleNamespace(device="cuda"))
    deleted = []
    ctx = SimpleNamespace(world=None, run_cfg=cfg, save_checkpoint=lambda name: tmp_path / name,
                          delete_checkpoint=deleted.append)
    record_checkpoint(ctx, 3, {})
    assert seen == {"backend": "vllm", "device": "cuda", "extra_model_args": {"max_model_len": 2048},
                    "timeout_s": 600} and deleted == [tmp_path / "record-000003"]
