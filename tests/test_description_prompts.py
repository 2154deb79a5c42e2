"""Tasks with a `description` (nq_open, every mmlu subject, a task of your own): the harness's prompts are lm-eval's
contexts byte for byte, chat template on and off, and its reward is lm-eval's per-doc score of the same responses.

lm-eval puts a task's description (after `system_instruction`) in the system message; with a chat template that
replaces the model's default system prompt. The reference here is lm-eval itself: `simple_evaluate` with its HFLM
on the tiny model, whose requests are answered by a script (cut at the stop strings as HFLM cuts them)."""
from __future__ import annotations

import json

import pytest
import yaml

from real_fixtures import build_tiny_model, write_task_data

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima"),
            ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Spain", "Madrid")]
OWN_DESCRIPTION = "The following are multiple choice questions about science.\n\n"


def _rows(n: int, offset: int) -> list[dict]:
    return [{"question": f"what is the capital of {c} (item {offset + i})", "answer": [a, a.upper()]}
            for i, (c, a) in ((i, CAPITALS[(offset + i) % len(CAPITALS)]) for i in range(n))]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def desc_env(tmp_path_factory):
    """(preset maker, model folder): nq_open on local files and a multiple-choice task of our own with a
    description (through include_path), over a tiny Qwen2 whose template has a default system prompt."""
    root = tmp_path_factory.mktemp("desc")
    model = build_tiny_model(root / "qwen2", "qwen2")
    arc = write_task_data(root / "data")["arc_easy"]
    nq = {"train": _write(root / "nq_train.jsonl", _rows(12, 0)),
          "validation": _write(root / "nq_validation.jsonl", _rows(10, 100))}
    own = root / "own_tasks"
    own.mkdir()
    (own / "own_science.yaml").write_text(yaml.safe_dump({
        "task": "own_science", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": arc["test"]}},
        "test_split": "test", "output_type": "multiple_choice", "description": OWN_DESCRIPTION,
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices.text}}",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}, sort_keys=False))

    def preset(chat: bool, system_prompt: str | None = None) -> dict:
        return {"world": {"kind": "real", "name": "tiny-desc", "base_model": str(model), "chat_template": chat,
                          "system_prompt": system_prompt,
                          "target": {"task": "nq_open", "data_files": nq, "max_gen_toks": 8},
                          "retention": [{"task": "own_science", "include_path": str(own), "metric": "acc"}],
                          "n_train": 8, "n_heldout": 4, "n_val": 4, "n_eval": 6, "n_val_nontarget": 4,
                          "n_eval_nontarget": 8, "max_new_tokens": 8}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        yield preset, model, root


def _world(desc_env, chat: bool, system_prompt: str | None = None):
    from harness.config import resolve_config
    from harness.world import build_world
    preset, _, root = desc_env
    path = root / f"preset-{chat}-{system_prompt is not None}.yaml"
    path.write_text(yaml.safe_dump(preset(chat, system_prompt)))
    cfg = resolve_config(preset=path, overrides=[])
    return build_world(cfg.world)


def _response(doc: dict) -> str:
    """A scripted answer per doc: right, right with stop-string tails and an article, or wrong."""
    gold, k = doc["answer"][0], int(doc["question"].rsplit("item ", 1)[1].rstrip(")"))
    return [gold, f"The {gold.lower()}, of course", "Atlantis", f" {gold}.\nQ: next", "Paris and Rome"][k % 5]


def _lm_eval_samples(world, model_dir, chat: bool, system_prompt: str | None):
    """lm-eval's own run (simple_evaluate, HFLM on the tiny model) with scripted responses: the contexts it
    built per (task, doc id) and its logged samples."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    contexts: dict[tuple[str, int], str] = {}

    class Scripted(HFLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for r in requests:
                contexts[r.task_name, r.doc_id] = r.args[0]
                text = _response(r.doc)
                for term in r.args[1]["until"]:  # HFLM cuts each generation at the task's stop strings
                    text = text.split(term)[0]
                out.append(text)
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            for r in requests:
                contexts[r.task_name, r.doc_id] = r.args[0]
            return [(0.0, True) for _ in requests]

    lm = Scripted(pretrained=str(model_dir), device="cpu", batch_size=4)
    tasks = [t for rt in world.real.values() for t in rt.lm_tasks().values()]
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, apply_chat_template=chat, system_instruction=system_prompt,
                                  log_samples=True, bootstrap_iters=0)
    return contexts, res["samples"]


@pytest.mark.parametrize("chat,system_prompt", [(True, None), (False, None), (True, "Be brief.")])
def test_description_prompts_and_rewards_are_lm_evals(desc_env, chat, system_prompt):
    _, model_dir, _ = desc_env
    world = _world(desc_env, chat, system_prompt)
    contexts, samples = _lm_eval_samples(world, model_dir, chat, system_prompt)
    nq, own = world.real["nq_open"], world.real["own_science"]
    # every eval/validation prompt is the context lm-eval built for that doc, byte for byte
    for split in ("val", "eval"):
        for task, rt in (("nq_open", nq), ("own_science", own)):
            for it, i in zip(world.eval_splits()[split][task], world.doc_ids[split][task]):
                assert it.prompt == contexts[rt.name, i]
    # training and held-out items (PLD labels, KL prompts) render the same way; by hand for one doc:
    q = world.train_items[0].prompt
    doc = world._doc(world.train_items[0])
    body = f"Q: {doc['question']}?\nA:"
    system = "Answer these questions:\n\n" if system_prompt is None else "Be brief.\nAnswer these questions:\n\n"
    if chat:  # the description is the system message: Qwen's default system prompt is gone
        assert q == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n" \
                    "<|im_start|>assistant\n"
    else:
        assert q == system + body
    assert all(it.prompt.count("Answer these questions:") == 1 for it in world.heldout_items)
    # the reward is lm-eval's per-doc exact_match of the same (uncut) responses
    scores = {s["doc_id"]: s["exact_match"] for s in samples[nq.name]}
    items = {int(it.key.split(":")[1]): it for sp in ("val", "eval") for it in world.eval_splits()[sp]["nq_open"]}
    assert set(scores) >= set(items)
    got = {i: world.verify(it, _response(world._doc(it))) for i, it in items.items()}
    assert got == {i: scores[i] for i in items}
    assert set(got.values()) == {0.0, 1.0}  # both outcomes occur, so the comparison can fail either way


def test_own_task_description_leads_its_plain_prompt(desc_env):
    world = _world(desc_env, False)
    it = world.eval_items["own_science"][0]
    doc = world._doc(it)
    assert it.prompt == f"{OWN_DESCRIPTION}Question: {doc['question']}\nAnswer:"
