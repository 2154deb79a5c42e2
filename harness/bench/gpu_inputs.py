"""The GPU check's offline inputs: local IFEval/ARC-Easy files, a tiny taught Qwen2, and the run config over them."""
from __future__ import annotations

import json
from pathlib import Path

from harness.tiny import build_tiny_model, teach, write_task_data


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
