"""A real world end to end, offline: tiny Qwen2/Llama models with byte-level BPE tokenizers and chat templates,
local copies of gsm8k, arc_easy and ifeval in their hub schemas, scored by lm-eval's own task definitions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from harness.config import world_presets
from real_fixtures import build_tiny_model, teach, write_punkt_tab, write_task_data

# Short answers the taught base learns to give: some pass an IFEval prompt's checks, some fail them.
ANSWERS = ["a short plain answer", "HELLO THERE FRIEND", "apple, pear, plum"]
SIZES = {"n_train": 12, "n_heldout": 4, "n_val": 4, "n_eval": 6, "n_val_nontarget": 4, "n_eval_nontarget": 6}


def _preset(model: str, data: dict, name: str) -> dict:
    """A real-world preset pointing at the test's own model and data files."""
    return {
        "world": {"kind": "real", "name": name, "base_model": model, "chat_template": True,
                  "target": {"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                             "metric": "exact_match", "max_gen_toks": 12},
                  "retention": [{"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"},
                                {"task": "ifeval", "data_files": data["ifeval"], "metric": "prompt_level_strict_acc",
                                 "max_gen_toks": 12}],
                  "max_new_tokens": 10, **SIZES},
        "train": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 2, "eval_every": 2, "lr": 1e-3},
        "eval": {"batch_size": 16, "bootstrap_iters": 0, "examples_logged": 2},
        "grpo": {"prompts_per_step": 2, "group_size": 2}, "trapo": {"prompts_per_step": 2, "break_strings": [" "]},
        "tracking": {"experiment": "real-test"},
    }


@pytest.fixture(scope="module")
def real_env(tmp_path_factory):
    """(preset files by arch, data files): models, data and nltk data built in a temporary folder."""
    root = tmp_path_factory.mktemp("real")
    data = write_task_data(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLTK_DATA", str(write_punkt_tab(root / "nltk")))
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        presets = {}
        for arch in ("qwen2", "llama"):
            model = build_tiny_model(root / arch, arch)
            presets[arch] = root / f"{arch}.yaml"
            presets[arch].write_text(yaml.safe_dump(_preset(str(model), data, f"tiny-{arch}")))
        rows = [json.loads(line) for line in open(data["ifeval"]["train"])]
        taught = teach(build_tiny_model(root / "qwen2-taught", "qwen2"), [r["prompt"] for r in rows],
                       [ANSWERS[i % len(ANSWERS)] for i in range(len(rows))])
        presets["ifeval"] = root / "ifeval-target.yaml"
        presets["ifeval"].write_text(yaml.safe_dump(_ifeval_target(root, taught, data)))
        yield presets, data


def _ifeval_target(root, model, data: dict) -> dict:
    """IFEval as the target: its instruction checks accept some of a random model's samples, so every method
    (self-sampling ones included) has data; expert labels come from a training file with a `response` field."""
    rows = [json.loads(line) for line in open(data["ifeval"]["train"])]
    train = root / "ifeval_sft.jsonl"
    train.write_text("".join(json.dumps({**r, "key": 5000 + i, "response": "a short plain answer in english"}) + "\n"
                             for i, r in enumerate(rows)))
    preset = _preset(str(model), data, "tiny-ifeval")
    preset["world"]["target"] = {"task": "ifeval", "data_files": data["ifeval"], "metric": "prompt_level_loose_acc",
                                 "max_gen_toks": 10, "train_file": str(train), "label_field": "response"}
    preset["world"]["retention"] = [{"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                                     "metric": "exact_match", "max_gen_toks": 10},
                                    {"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"}]
    preset["world"]["n_val"], preset["world"]["n_eval"] = 10, 20
    return preset


def _world(preset, **over):
    from harness.config import resolve_config
    from harness.world import build_world
    cfg = resolve_config(preset=preset, overrides=[f"{k}={v}" for k, v in over.items()])
    return build_world(cfg.world), cfg


def test_splits_labels_and_verifier(real_env):
    presets, _ = real_env
    world, _ = _world(presets["qwen2"])
    assert world.tasks == ["gsm8k", "arc_easy", "ifeval"]
    assert len(world.train_items) == 12 and len(world.heldout_items) == 4
    for t in world.tasks:
        val = {it.key for it in world.val_items[t]}
        ev = {it.key for it in world.eval_items[t]}
        assert len(val) == 4 and len(ev) == 6 and not val & ev  # disjoint validation and eval docs
    train = {it.key for it in world.train_items}
    assert not train & {it.key for it in world.heldout_items}
    it = world.train_items[0]
    # Qwen's template: its default system message, the lm-eval context as the user turn, the assistant header
    assert it.prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\nQuestion: " in it.prompt
    assert it.prompt.endswith("\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert "####" in it.label  # gsm8k's worked solution is the expert label
    # The reward is lm-eval's flexible-extract + exact_match: the label's final number scores 1, another 0.
    assert world.verify(it, it.label) == 1.0
    assert world.verify(it, "The answer is 123456789.") == 0.0
    # lm-eval cuts generations at the task's stop strings; the reward cuts rollouts the same way.
    answer = it.label.split("####")[-1].strip()
    assert world.verify(it, f"Question: what? {answer}") == 0.0


def test_llama_prompt_uses_its_template(real_env):
    presets, _ = real_env
    world, _ = _world(presets["llama"])
    p = world.train_items[0].prompt
    assert p.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert p.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_lm_eval_sees_the_training_prompts_and_scores_both_kinds(real_env, monkeypatch):
    """The contexts lm-eval builds (chat template included) are the items' prompts, and both request kinds run."""
    from harness import evaluation
    from harness.evaluation import Evaluator
    from harness.modeling import load_model

    presets, _ = real_env
    world, _ = _world(presets["qwen2"])
    model, tok = load_model(world.base_path())
    seen: list[str] = []
    real_generate = evaluation.greedy_generate

    def spy(model, tokenizer, prompts, **kw):
        seen.extend(prompts)
        return real_generate(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(evaluation, "greedy_generate", spy)
    res = Evaluator(world, tok, batch_size=8).evaluate(model)
    generated = {it.prompt for sp in ("val", "eval") for t in ("gsm8k", "ifeval") for it in world.eval_splits()[sp][t]}
    assert set(seen) == generated  # generate_until: exactly the world's prompts; arc_easy went by loglikelihood
    for sp in ("val", "eval"):
        for t, n in (("gsm8k", 4 if sp == "val" else 6), ("arc_easy", 4 if sp == "val" else 6),
                     ("ifeval", 4 if sp == "val" else 6)):
            assert res[sp].correct[t].shape == (n,)
            assert set(np.unique(res[sp].correct[t])) <= {0.0, 1.0}
    # multiple choice: the response is the chosen option's index
    assert all(r.isdigit() for r in res["eval"].responses["arc_easy"])


def test_loglikelihood_matches_a_hand_computed_sum(real_env):
    """LiveLM.loglikelihood = sum of log-softmax of the continuation tokens from one full forward pass."""
    from harness.evaluation import LiveLM
    from harness.modeling import load_model

    presets, _ = real_env
    world, _ = _world(presets["llama"])
    model, tok = load_model(world.base_path())

    class Req:
        def __init__(self, *args):
            self.args = args

    lm = LiveLM(model, tok, batch_size=4, score_batch_size=2)
    reqs = [Req("Question: what is two plus two?\nAnswer:", " four"), Req("The sky is", " blue today"),
            Req("Pick one:", " A")]
    got = lm.loglikelihood(reqs)
    for r, (ll, greedy) in zip(reqs, got):
        ctx, cont = lm._encode_pair(*r.args)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        want = sum(float(logp[len(ctx) - 1 + j, tok_id]) for j, tok_id in enumerate(cont))
        argmax = all(int(logp[len(ctx) - 1 + j].argmax()) == tok_id for j, tok_id in enumerate(cont))
        assert math.isclose(ll, want, rel_tol=1e-4, abs_tol=1e-4)
        assert greedy == argmax
    # the leading space of a continuation stays with it: "Answer:" + " four" splits as HFLM splits it
    ctx, cont = lm._encode_pair("Answer: ", "four")
    assert tok.decode(cont).startswith(" ")


@pytest.mark.parametrize("method", ["sft", "self_sft", "iterative_sft", "onpolicy_sft", "tms", "idft", "trapo", "grpo"])
def test_every_method_trains_on_the_real_preset(real_env, method):
    from harness.config import resolve_config
    from harness.run import run

    presets, _ = real_env
    overrides = {"tms": ["tms.checkpoints=2", "tms.teacher_steps=2"], "iterative_sft": ["iterative_sft.rounds=2"]}
    cfg = resolve_config(preset=presets["ifeval"], method=method, overrides=overrides.get(method, []))
    final = run(cfg, progress=False)
    assert final["steps"] == 2
    for k in ("target_gain", "nontarget_drop", "pld_drift", "kl_to_base", "val/target_gain"):
        assert math.isfinite(final[k]), k
    assert final["kl_to_base"] > 0  # the policy moved away from the base


def test_llama_world_runs_grpo(real_env):
    from harness.config import resolve_config
    from harness.run import run

    presets, _ = real_env
    cfg = resolve_config(preset=presets["llama"], method="grpo")
    final = run(cfg, progress=False)
    # The tiny Llama rarely answers correctly within its 10 new tokens, so a group may score all 0 (advantage 0,
    # no update) depending on the draws: that the policy moves is tested on the micro world (test_pg.py).
    assert final["steps"] == cfg.train.max_steps
    assert final["kl_to_base"] >= 0 and math.isfinite(final["kl_to_base"]) and math.isfinite(final["nontarget_drop"])


def test_dry_run_reports_what_is_missing(real_env, tmp_path, capsys):
    from harness.cli import main

    presets, data = real_env
    assert main(["run", "--preset", str(presets["qwen2"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ready: 12 training items" in out and "MISSING" not in out
    broken = yaml.safe_load(presets["qwen2"].read_text())
    broken["world"]["retention"][0]["data_files"]["test"] = str(tmp_path / "nope.jsonl")
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert main(["run", "--preset", str(path), "--dry-run"]) == 2
    assert "MISSING  arc_easy test data" in capsys.readouterr().out


def test_bad_real_world_inputs_are_one_line_errors(real_env):
    from harness.errors import HarnessError

    presets, _ = real_env
    with pytest.raises(HarnessError, match="asks for"):
        _world(presets["qwen2"], **{"world.n_eval": 500})
    with pytest.raises(HarnessError, match="label_field"):
        _ = _world(presets["qwen2"], **{"world.target.label_field": "nope"})[0].train_items
    with pytest.raises(HarnessError, match="does not exist"):
        _world(presets["qwen2"], **{"world.base_model": "/no/such/model"})[0].base_path()
    with pytest.raises(HarnessError, match="not in the local Hugging Face cache"):
        _world(presets["qwen2"], **{"world.base_model": "nobody/no-such-model"})[0].base_path()


@pytest.mark.parametrize("preset", sorted(world_presets("real")))
def test_shipped_presets_validate(preset, monkeypatch, tmp_path):
    """Every shipped preset resolves for every method, and its dry run lists what it needs (here: missing)."""
    from benchmarks.staging import requirements
    from harness.config import resolve_config
    from harness.method import method_names

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache: the model is reported missing
    for m in method_names():
        cfg = resolve_config(world=preset, method=m)
        assert cfg.world.kind == "real" and cfg.world.source
    reqs = requirements(cfg.world)
    if cfg.world.base_model.startswith("gguf:"):  # a package ships it: converted on first use, never downloaded
        assert reqs[0].what.startswith("base model (GGUF") and reqs[0].present is not False
    else:
        assert reqs[0].what == "base model" and reqs[0].present is False


def test_fetch_refuses_offline_and_lists_local_worlds_as_present(real_env, monkeypatch, capsys):
    from harness.cli import main

    presets, _ = real_env
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch", "--world", "rbd-qwen2.5-1.5b-ifeval"]) == 2
    assert "needs the network" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    # a world of local files needs nothing fetched: every requirement is already there
    assert main(["fetch", "--preset", str(presets["qwen2"])]) == 0
    out = capsys.readouterr().out
    assert "ok       base model" in out and "MISSING" not in out and "nltk punkt_tab" in out


def test_list_shows_the_real_presets(capsys):
    from harness.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("rbd-qwen2.5-1.5b-ifeval", "tms-qwen2.5-1.5b-math", "trapo-qwen2.5-math-7b"):
        assert name in out


def test_stop_window_flags_multi_token_stop_strings_like_a_full_decode(real_env):
    """BPE splits "Question:" over several tokens; looking back a window flags it at the same step as a full decode."""
    from harness import greedy
    from harness.modeling import load_model

    presets, _ = real_env
    world, _ = _world(presets["qwen2"])
    _, tok = load_model(world.base_path())
    stops = ["Question:", "\n\n", "<|im_end|>"]
    texts = ["The total is 42 eggs.\n\nQuestion: next", "First Question: here", "no stop at all in this line",
             "x" * 40 + " Question:"]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    T = max(map(len, ids))
    rows = torch.tensor([i + [tok.pad_token_id] * (T - len(i)) for i in ids])
    window = greedy._StopOnStrings(tok, stops, prompt_len=0)
    for t in range(1, T + 1):
        got = window(rows[:, :t], None)
        full = [any(s in tok.decode(r[:t].tolist(), skip_special_tokens=True) for s in stops) for r in rows]
        assert got.tolist() == full, t


def test_evaluation_of_record_scores_the_final_checkpoint_in_a_subprocess(real_env):
    """eval.record_backend=hf: lm-eval's HFLM scores the saved final checkpoint in a fresh process; it agrees with
    the in-run evaluation example by example (float32 on CPU), and both are logged."""
    from mlflow import MlflowClient

    from harness.config import resolve_config
    from harness.run import run

    presets, _ = real_env
    cfg = resolve_config(preset=presets["qwen2"], method="sft",
                               overrides=["eval.record_backend=hf", "tracking.experiment=record-test"])
    run(cfg, progress=False)
    client = MlflowClient()
    exp = client.get_experiment_by_name("record-test")
    (r,) = client.search_runs([exp.experiment_id], "tags.kind = 'run'")
    m = r.data.metrics
    assert m["record/agreement"] == 1.0
    assert {"record/acc/gsm8k", "record/acc/arc_easy", "record/val/acc/ifeval"} <= set(m)
    assert m["record/acc/arc_easy"] == m["acc/arc_easy"]


def _group_folder(root, data) -> str:
    """A folder with your own lm-eval YAMLs: two ARC-Easy subtasks over local files and a group of them."""
    from benchmarks.lmeval_tasks import find_entry

    arc = find_entry("arc_easy").yaml_path
    root.mkdir(exist_ok=True)
    for name in ("tiny_arc_a", "tiny_arc_b"):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({
            "include": str(arc), "task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": data["arc_easy"]}}))
    (root / "tiny_arc_group.yaml").write_text(yaml.safe_dump({
        "group": "tiny_arc_group", "task": ["tiny_arc_a", "tiny_arc_b"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 1}}))
    return str(root)


def test_a_group_is_one_task_scored_per_example_by_its_subtasks(real_env, tmp_path):
    """An lm-eval group (like mmlu) is one retention task: its subtasks' docs concatenated, each scored by its own
    subtask; lm-eval evaluates the subtasks, and per-example correctness is read back in the world's item order."""
    from harness.evaluation import Evaluator
    from harness.modeling import load_model

    presets, data = real_env
    folder = _group_folder(tmp_path / "tasks", data)
    preset = yaml.safe_load(presets["qwen2"].read_text())
    preset["world"]["retention"] = [{"task": "tiny_arc_group", "include_path": folder, "metric": "acc"}]
    path = tmp_path / "group.yaml"
    path.write_text(yaml.safe_dump(preset))
    world, _ = _world(path)
    group = world.real["tiny_arc_group"]
    assert [leaf.source.task for leaf in group.leaves] == ["tiny_arc_a", "tiny_arc_b"]
    assert len(group.eval_docs()) == 24  # 12 test docs per subtask
    (spec,) = [s for s in world.eval_tasks() if s.task == "tiny_arc_group"]
    assert set(spec.lm_tasks) == {"harness_real_tiny_arc_a", "harness_real_tiny_arc_b"}
    assert {name for name, _ in spec.docs["val"] + spec.docs["eval"]} <= set(spec.lm_tasks)
    model, tok = load_model(world.base_path())
    res = Evaluator(world, tok, batch_size=8).evaluate(model)
    assert res["val"].correct["tiny_arc_group"].shape == (4,) and res["eval"].correct["tiny_arc_group"].shape == (6,)
    # each item's score is its subtask's: verifying the gold choice's text gives 1 for every item
    for it in world.eval_items["tiny_arc_group"]:
        assert world.verify(it, it.answer) == 1.0
    with pytest.raises(Exception, match="drop data_files"):
        preset["world"]["retention"][0]["data_files"] = data["arc_easy"]
        path.write_text(yaml.safe_dump(preset))
        _world(path)


def test_a_relative_include_path_loads_from_the_folder_it_names(monkeypatch, tmp_path):
    """Run from the project root, `include_path: benchmarks/smollm2_tasks` names a folder here: it is made absolute,
    so the staged task's `include:` resolves (it once stayed relative and lm-eval found no task)."""
    from pathlib import Path

    from benchmarks.lmeval_tasks import TaskSource, load_task

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    source = TaskSource(task="smol_capitals", include_path="benchmarks/smollm2_tasks", metric="acc")
    assert source.include_path == str(root / "benchmarks" / "smollm2_tasks")
    task = load_task(source, tmp_path)
    assert len(task.eval_docs()) == 104 and task.prompt(task.eval_docs()[0]).startswith("Question: What is the capital of")
