"""The GPU check's offline inputs (local IFEval/ARC-Easy files, a tiny taught Qwen2, the run config over them, a
private cache and store) and its row helpers (rows printed as measured, time limits, why vLLM rows cannot run)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

from harness.tiny import build_tiny_model, teach, write_punkt_tab, write_task_data


def preset(model: str, data: dict, steps: int, device: str) -> dict:
    """A real-world run config: the given model, local IFEval/ARC-Easy files, tiny sizes, `steps` steps."""
    sizes = dict(n_train=12, n_heldout=4, n_val=4, n_eval=8, n_val_nontarget=4, n_eval_nontarget=6)
    return {
        "world": {"kind": "real", "name": "gpu-check", "base_model": model, "chat_template": True,
                  "target": {"task": "ifeval", "data_files": data["ifeval"], "metric": "prompt_level_loose_acc",
                             "max_gen_toks": 10, "train_file": data["sft"], "label_field": "response"},
                  "retention": [{"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"}],
                  "max_new_tokens": 10, **sizes},
        "train": {"max_steps": steps, "batch_size": 4, "micro_batch_size": 2, "eval_every": steps, "lr": 1e-4,
                  "device": device, "precision": "bf16" if device == "cuda" else "fp32",
                  "threads": None if device == "cuda" else 1},
        "eval": {"batch_size": 16, "bootstrap_iters": 0, "examples_logged": 2},
        "grpo": {"prompts_per_step": 2, "group_size": 2}, "trapo": {"prompts_per_step": 2, "break_strings": [" "]},
        "tms": {"checkpoints": 2, "teacher_steps": 2}, "iterative_sft": {"rounds": 2},
        "tracking": {"experiment": "gpu-check"},
    }


ANSWERS = ["a short plain answer", "HELLO THERE FRIEND", "apple, pear, plum"]  # some pass IFEval's checks


def offline_inputs(root: Path) -> tuple[dict, str]:
    """Local task files (IFEval target with an SFT file, ARC-Easy retention) and a tiny taught Qwen2 (harness.tiny)."""
    data = write_task_data(root / "data")
    rows = [json.loads(line) for line in open(data["ifeval"]["train"])]
    sft = root / "data" / "ifeval_sft.jsonl"
    sft.write_text("".join(json.dumps({**r, "key": 5000 + i, "response": ANSWERS[i % len(ANSWERS)]}) + "\n"
                           for i, r in enumerate(rows)))
    model = teach(build_tiny_model(root / "tiny-qwen2", "qwen2"), [r["prompt"] for r in rows],
                  [ANSWERS[i % len(ANSWERS)] for i in range(len(rows))])
    return {**data, "sft": str(sft)}, str(model)


@contextlib.contextmanager
def private_env(root: Path) -> Iterator[None]:
    """HARNESS_CACHE, MLflow store and NLTK data under `root` while the check runs; the caller's values after."""
    want = {"HARNESS_CACHE": str(root / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "NLTK_DATA": str(write_punkt_tab(root / "nltk"))}
    old = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    import nltk  # lm-eval's IFEval checks punkt_tab at import: point an already-imported nltk at ours too
    nltk.data.path.insert(0, want["NLTK_DATA"])
    try:
        yield
    finally:
        nltk.data.path.remove(want["NLTK_DATA"])
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


Row = tuple[str, str, str, str]


class Measured(list):
    """Rows that are also printed to stderr the moment they are added: a check cut off by a time limit (a long
    first compile, a slow sampler) has still shown everything it measured before it."""

    def append(self, row: Row) -> None:
        """Add `row` and print it at once."""
        print("measured: " + " | ".join(row), file=sys.stderr, flush=True)
        super().append(row)


@contextlib.contextmanager
def time_limit(seconds: int | None) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (None: no limit)."""
    if not seconds:
        yield
        return
    def expire(signum, frame):
        raise TimeoutError(f"not done within {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def vllm_missing(device: str) -> str | None:
    """Why the vLLM rows cannot run here (None when they can): a row result, not a failure."""
    if importlib.util.find_spec("vllm") is None:
        return "not installed"
    return None if device == "cuda" else "needs cuda"
