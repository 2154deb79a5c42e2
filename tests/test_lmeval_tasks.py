"""Real lm-eval tasks as harness tasks: prompts and rewards must be exactly lm-eval's (offline, local files)."""
from __future__ import annotations

import importlib.util
import re
import time

import pytest

from benchmarks.lmeval_tasks import TaskSource, load_task
from harness.errors import HarnessError
from real_fixtures import build_tiny_model, write_punkt_tab, write_task_data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(data_files, workdir) with nltk pointed at a local punkt_tab, offline."""
    import nltk

    root = tmp_path_factory.mktemp("lmeval")
    nltk_dir = write_punkt_tab(root / "nltk_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("NLTK_DATA", str(nltk_dir))
        mp.setattr(nltk.data, "path", list(nltk.data.path))  # preflight adds NLTK_DATA; undo it afterwards
        yield write_task_data(root / "data"), root / "work"


def _load(env, task: str, **kw):
    files, work = env
    return load_task(TaskSource(task=task, data_files=files[task], **kw), work)


class FakeLM:
    """An lm-eval LM that answers from a function of the doc and records every request's arguments."""

    def __new__(cls, respond):
        from lm_eval.api.model import LM

        class _Fake(LM):
            def __init__(self):
                super().__init__()
                self.args: list[tuple] = []

            def generate_until(self, requests, disable_tqdm: bool = False):
                self.args += [r.args for r in requests]
                return [respond(r.doc) for r in requests]

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                self.args += [r.args for r in requests]
                return [respond(r.doc, r.args[1]) for r in requests]

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

        return _Fake()


def _evaluate(rt, lm) -> list[dict]:
    from lm_eval.evaluator import evaluate

    res = evaluate(lm=lm, task_dict={"tasks": {rt.name: rt.task}}, bootstrap_iters=0, log_samples=True)
    return res["samples"][rt.name]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_model_builds_loads_and_chats(tmp_path, arch):
    import transformers

    from harness.modeling import load_model

    transformers.Qwen2ForCausalLM, transformers.LlamaForCausalLM  # lazy imports (~2.5 s) are not build time
    start = time.perf_counter()
    path = build_tiny_model(tmp_path / arch, arch=arch)
    assert time.perf_counter() - start < 3.0
    model, tok = load_model(str(path))
    assert model.config.vocab_size == len(tok) and tok.pad_token_id is not None
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                   tokenize=False)
    expected_end = {"qwen2": "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n",
                    "llama": "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n"}[arch]
    assert text.endswith(expected_end)
    assert tok.decode(tok("Natalia sold 48 clips.\n#### 72", add_special_tokens=False).input_ids) == \
        "Natalia sold 48 clips.\n#### 72"  # byte-level BPE round-trips


def test_gsm8k_loads_with_default_budget(env):
    rt = _load(env, "gsm8k", filter="flexible-extract")
    assert (rt.name, rt.output_type, rt.version, rt.metric) == ("harness_real_gsm8k", "generate_until", 3.0,
                                                                 "exact_match")
    assert rt.filter_name == "flexible-extract"
    assert rt.gen_kwargs["max_gen_toks"] == 256 and "Question:" in rt.gen_kwargs["until"]  # YAML has none
    assert len(rt.eval_docs()) == 20 and len(rt.train_docs()) == 40
    doc = rt.train_docs()[0]
    assert rt.prompt(doc) == f"Question: {doc['question']}\nAnswer:" and rt.label(doc) == doc["answer"]
    assert _load(env, "gsm8k").filter_name == "strict-match"  # None: the task's first filter
    assert _load(env, "gsm8k", max_gen_toks=64).gen_kwargs["max_gen_toks"] == 64


# gsm8k responses for gold g, with (strict-match, flexible-extract) exact_match worked out by hand:
# strict takes "#### N"; flexible takes the last number-ish span; exact_match then drops ",", "$", a final "."
GSM8K_CASES = [
    (lambda g: f"So the total is {g}.\n#### {g}", 1.0, 1.0),
    (lambda g: f"The answer is {g}.", 0.0, 1.0),               # no "####": strict sees [invalid]
    (lambda g: f"It costs ${int(g):,}.", 0.0, 1.0),             # "$1,260." -> "1260"
    (lambda g: f"#### {int(g) + 1}", 0.0, 0.0),                 # wrong number
    (lambda g: "zzz no idea", 0.0, 0.0),                        # garbage: both [invalid]
]


def test_gsm8k_prompt_and_score_equal_lm_eval(env):
    flexible, strict = _load(env, "gsm8k", filter="flexible-extract"), _load(env, "gsm8k", filter="strict-match")
    docs = flexible.eval_docs()
    case = {d["question"]: i % len(GSM8K_CASES) for i, d in enumerate(docs)}
    gold = {d["question"]: d["answer"].split("#### ")[-1] for d in docs}
    lm = FakeLM(lambda doc: GSM8K_CASES[case[doc["question"]]][0](gold[doc["question"]]))
    samples = _evaluate(flexible, lm)
    assert sorted(a[0] for a in lm.args) == sorted(flexible.prompt(d) for d in docs)  # the exact contexts
    assert all(a[1] == flexible.gen_kwargs for a in lm.args)
    assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract"} and len(samples) == 2 * len(docs)
    for s in samples:
        _, want_strict, want_flexible = GSM8K_CASES[case[s["doc"]["question"]]]
        rt, want = (strict, want_strict) if s["filter"] == "strict-match" else (flexible, want_flexible)
        assert s["exact_match"] == want
        assert rt.score(s["doc"], s["resps"][0][0]) == want


def test_arc_easy_is_multiple_choice_with_lm_eval_contexts(env):
    rt = _load(env, "arc_easy")
    assert (rt.output_type, rt.metric, rt.version) == ("multiple_choice", "acc", 1.0)
    docs = rt.eval_docs()
    assert len(docs) == 12  # the test split, as lm-eval picks

    def gold_text(doc):
        return doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]

    lm = FakeLM(lambda doc, cont: (0.0 if cont == rt.target_delimiter + gold_text(doc) else -5.0, False))
    samples = _evaluate(rt, lm)
    assert all(s["acc"] == 1.0 for s in samples)
    assert {a[0] for a in lm.args} == {rt.prompt(d) for d in docs}
    doc = docs[0]
    assert rt.label(doc) == gold_text(doc)
    k = doc["choices"]["text"].index(gold_text(doc))
    other = (k + 1) % 4
    assert rt.score(doc, f" {gold_text(doc)} is right") == 1.0
    assert rt.score(doc, "ABCD"[k]) == 1.0 and rt.score(doc, f"({'ABCD'[k]}) because") == 1.0
    assert rt.score(doc, "ABCD"[other]) == 0.0 and rt.score(doc, doc["choices"]["text"][other]) == 0.0
    assert rt.score(doc, "zzz") == 0.0


# ifeval: (right, wrong) response per prompt of real_fixtures._IFEVAL, in order.
IFEVAL_RESPONSES = [
    ("The sea is blue and wide and calm.", "The sea, the sky, the sand."),
    ("the cat is a small animal that likes to sleep in the warm sun all day long.", "The Cat is a small animal."),
    ("The dog ran across the green field to find the bright red ball that was lost.", "The dog ran."),
    ("Rain falls from clouds. It waters the ground.", "Rain is water"),
    ("<<Song of Joy>>\nLa la la.", "Song of Joy"),
    ("I like apple and pear and plum.", "I like plum."),
    ("Hello friend. Is there anything else I can help with?", "Hello friend."),
    ("* Sleep early.\n* Avoid screens.", "* Sleep early."),
    ('"Hello there."', "Hello there."),
    ("The moon is bright and grey.", "The moon is made of green cheese."),
    ("Dear Ann, I miss you.\nP.S. See you soon.", "Dear Ann, I miss you."),
    ("A tree has *green leaves* and *brown bark*.", "A tree has *green leaves*."),
    ("Bread is good. I bake bread daily. Fresh bread smells nice.", "Bread is good, I bake bread."),
    ("SUMMER IS HOT AND SUNNY AND WE GO TO THE BEACH EVERY SINGLE DAY.", "Summer is hot."),
    ("The sky is blue because air scatters blue light more than red light.",
     "Le ciel est bleu parce que l'air diffuse davantage la lumière bleue."),
]


def test_ifeval_prompt_and_score_equal_lm_eval(env, monkeypatch):
    import langdetect

    monkeypatch.setattr(langdetect.DetectorFactory, "seed", 0)  # langdetect samples; make it repeatable
    rt = _load(env, "ifeval")
    assert (rt.output_type, rt.metric, rt.filter_name, rt.gen_kwargs["max_gen_toks"]) == \
        ("generate_until", "prompt_level_strict_acc", "none", 1280)
    docs = rt.eval_docs()
    n = len(IFEVAL_RESPONSES)

    def plan(doc):  # rows 0..14 answered right, 15..27 wrong, 28..29 empty: expected strict score
        i = doc["key"] - 1000
        return ("", 0.0) if i >= 28 else (IFEVAL_RESPONSES[i % n][0], 1.0) if i < n else (IFEVAL_RESPONSES[i % n][1], 0.0)

    lm = FakeLM(lambda doc: plan(doc)[0])
    samples = _evaluate(rt, lm)
    assert sorted(a[0] for a in lm.args) == sorted(rt.prompt(d) for d in docs) == sorted(d["prompt"] for d in docs)
    assert len(samples) == len(docs) == 30
    for s in samples:
        assert float(s["prompt_level_strict_acc"]) == plan(s["doc"])[1], s["doc"]["instruction_id_list"]
        assert rt.score(s["doc"], s["resps"][0][0]) == plan(s["doc"])[1]
    with pytest.raises(HarnessError, match="no training split"):
        rt.train_docs()
    with pytest.raises(HarnessError, match="no label text"):
        rt.label(docs[0])


def test_unknown_names_say_what_to_do(env):
    with pytest.raises(HarnessError, match=r"unknown lm-eval task 'gsm8kk'\. Did you mean 'gsm8k'\?"):
        _load_name(env, "gsm8kk")
    with pytest.raises(HarnessError, match=r"group 'mmlu' reads each subtask's own dataset: drop data_files"):
        load_task(TaskSource(task="mmlu", data_files={"test": "x.jsonl"}), env[1])
    with pytest.raises(HarnessError, match=r"unknown lm-eval filter 'flexible'\. Did you mean 'flexible-extract'"):
        _load(env, "gsm8k", filter="flexible")


def _load_name(env, task):
    return load_task(TaskSource(task=task), env[1])


def test_missing_split_or_file_is_one_line(env, tmp_path):
    files, work = env
    with pytest.raises(HarnessError, match=r"needs split 'train' .*add train: <file>"):
        load_task(TaskSource(task="gsm8k", data_files={"test": files["gsm8k"]["test"]}), work)
    with pytest.raises(HarnessError, match=r"split 'train' of 'gsm8k' not found: .*nope\.jsonl"):
        load_task(TaskSource(task="gsm8k", data_files={**files["gsm8k"], "train": str(tmp_path / "nope.jsonl")}), work)


def test_preflight_names_the_missing_dependency(env, monkeypatch, tmp_path):
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(HarnessError, match=r"punkt_tab.*set NLTK_DATA .*harness fetch"):
        _load(env, "ifeval")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "langdetect" else real(name, *a))
    with pytest.raises(HarnessError, match=re.escape('needs langdetect; install it with pip install "lm-eval[ifeval]"')):
        _load(env, "ifeval")


def test_groups_and_tags_expand_to_their_tasks_in_order():
    """mmlu (a group of groups of tags) is its 57 subjects; ai2_arc (a tag) is its two tasks; a task is itself."""
    from benchmarks.lmeval_groups import leaf_tasks

    mmlu = leaf_tasks("mmlu")
    assert len(mmlu) == 57 and len(set(mmlu)) == 57 and "mmlu_abstract_algebra" in mmlu
    assert leaf_tasks("ai2_arc") == ["arc_challenge", "arc_easy"]
    assert leaf_tasks("gsm8k") == ["gsm8k"]


def test_a_staged_task_yaml_is_never_seen_half_written(tmp_path):
    """Two sweep workers stage the same task into one cache: a reader must see the old or the new text, never a
    truncated file (which lm-eval reads as no task: "not a registered task"), and unchanged text is not rewritten."""
    import threading

    from benchmarks.lmeval_tasks import stage_yaml

    path = tmp_path / "harness_real_x.yaml"
    texts = ["task: harness_real_x\n" + "a: 1\n" * 2000, "task: harness_real_x\n" + "b: 2\n" * 2000]
    stage_yaml(path, texts[0])
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        stage_yaml(path, texts[i % 2])
    done.set()
    reader.join()
    assert seen <= set(texts)
    before = path.stat().st_mtime_ns
    stage_yaml(path, path.read_text())
    assert path.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
