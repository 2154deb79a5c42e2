"""The toy world's evaluation as inline lm-eval tasks: one generate_until task per (split, task family)."""
from __future__ import annotations

from typing import Callable

from harness.world import Item

TASK_PREFIX = "harness_"  # lm-eval task names are global; keep ours from colliding with built-ins


def toy_task_config(verify: Callable[[Item, str], float], name: str, items: list[Item], gen_kwargs: dict) -> dict:
    """An inline lm-eval task config (lm-eval task `name`) over one split of a toy task, scored by `verify`.

    A `custom_dataset` of {prompt, answer, idx} rows, `doc_to_text` a bare field name (a jinja template is
    recompiled per document, ~2 ms each), and a `process_results` that calls `verify` -- the very
    function training rewards use (the world's `verify`), so evaluation and reward cannot drift apart.
    """
    import datasets

    rows = [{"prompt": it.prompt, "answer": it.answer, "idx": i} for i, it in enumerate(items)]

    def dataset(**_metadata) -> dict:  # lm-eval calls it as fn(**metadata, **dataset_kwargs)
        return {"test": datasets.Dataset.from_list(rows)}

    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"acc": verify(items[doc["idx"]], results[0])}

    return {
        "task": name, "custom_dataset": dataset, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "prompt", "doc_to_target": "answer",
        "process_results": process_results, "generation_kwargs": dict(gen_kwargs),
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
