"""Greedy evaluation of a live (in-memory) model through lm-eval, scored by the world's own verifiers.

The toy tasks are lm-eval tasks built once from inline dict configs: a
`custom_dataset` of {prompt, answer, idx} rows, `doc_to_text` a bare field
name (a jinja template is recompiled per document, ~2 ms each), and a
`process_results` that calls `world.verify` -- the very function training
rewards use, so evaluation and reward cannot drift apart.

The model is wrapped in a thin `lm_eval.api.model.LM` (`LiveLM`), not in
`HFLM`: HFLM imports `accelerate` at module level (only in our `gpu` extra), and
on a model object it also calls `model.eval()`/`tie_weights()` and never
restores the mode. LiveLM's greedy loop is `greedy_generate`, which
`plain_evaluate` calls directly, so the two paths differ only by lm-eval's
machinery (requests, filters, process_results, sample logging): that
difference is the overhead `harness/bench/eval_overhead.py` measures.

Real lm-eval tasks plug in at `Evaluator._specs`: a world that lists lm-eval
task names would map each harness task to (the task name, its per-example
metric key) instead of (an inline dict, "acc"); collection by doc_id is shared.
Loglikelihood tasks (MMLU, ARC) would need `LiveLM.loglikelihood` or HFLM.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from lm_eval.api.model import LM

from harness.errors import HarnessError
from harness.greedy import STOP, greedy_generate
from harness.metrics import eval_mode

# lm-eval logs INFO lines on every evaluate() call; a training loop evaluates often.
logging.getLogger("lm_eval").setLevel(logging.WARNING)

TASK_PREFIX = "harness_"  # lm-eval task names are global; keep ours from colliding with built-ins


@dataclass
class SplitScores:
    """Greedy evaluation of one model on one split (validation or eval) of a world's tasks."""

    acc: dict[str, float]  # task -> accuracy in points 0..100
    correct: dict[str, np.ndarray]  # task -> 0/1 float array, in the split's item order
    responses: dict[str, list[str]]  # task -> decoded greedy responses, same order


@dataclass
class EvalResult:
    """Greedy evaluation of one model on a world's evaluation splits; `.acc` etc. read the eval split."""

    splits: dict[str, SplitScores]  # "val" / "eval" -> scores
    seconds: float

    def __getitem__(self, split: str) -> SplitScores:
        return self.splits[split]

    @property
    def acc(self) -> dict[str, float]:
        return self.splits["eval"].acc

    @property
    def correct(self) -> dict[str, np.ndarray]:
        return self.splits["eval"].correct

    @property
    def responses(self) -> dict[str, list[str]]:
        return self.splits["eval"].responses


@contextlib.contextmanager
def _quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """Silence lm-eval's logger and its per-task 'building requests' progress bars for one block."""
    logger = logging.getLogger("lm_eval")
    old = logger.level
    logger.setLevel(level)
    import lm_eval.api.task as task_mod
    orig = getattr(task_mod, "tqdm", None)
    if orig is not None:
        # build_all_requests wraps every task's docs in tqdm with no way to disable it.
        task_mod.tqdm = lambda *a, **k: orig(*a, **{**k, "disable": True})
    try:
        yield
    finally:
        logger.setLevel(old)
        if orig is not None:
            task_mod.tqdm = orig


class LiveLM(LM):
    """A minimal lm-eval LM over an in-memory transformers model: greedy `generate_until` only."""

    def __init__(self, model, tokenizer, batch_size: int, add_special_tokens: bool = False):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.add_special_tokens = add_special_tokens

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy responses, one per request, grouped by identical generation kwargs."""
        groups: dict[str, tuple[dict, list[int]]] = {}
        for i, r in enumerate(requests):
            key = json.dumps(r.args[1], sort_keys=True, default=repr)
            groups.setdefault(key, (r.args[1], []))[1].append(i)
        out: list[str] = [""] * len(requests)
        for gen_kwargs, idx in groups.values():
            kw = dict(gen_kwargs)
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = kw.pop("max_gen_toks", kw.pop("max_new_tokens", None))
            if kw.pop("do_sample", False) or kw.pop("temperature", 0.0):
                raise HarnessError("LiveLM decodes greedily only; set do_sample: false in the task's generation_kwargs")
            if max_new is None or kw:
                raise HarnessError(f"unsupported generation_kwargs {kw or {'max_gen_toks': None}}; "
                                   f"give max_gen_toks and only until/do_sample/temperature")
            resps = greedy_generate(self.model, self.tokenizer, [requests[i].args[0] for i in idx],
                                    max_new_tokens=int(max_new), batch_size=self.batch_size, stop=until,
                                    add_special_tokens=self.add_special_tokens)
            for i, r in zip(idx, resps):
                out[i] = r
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("LiveLM serves generate_until tasks only; loglikelihood tasks need HFLM")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("LiveLM serves generate_until tasks only; loglikelihood tasks need HFLM")


def _toy_task_config(world, name: str, items: list, gen_kwargs: dict) -> dict:
    """An inline lm-eval task config (lm-eval task `name`) over one split of a toy task, scored by `world.verify`."""
    import datasets

    rows = [{"prompt": it.prompt, "answer": it.answer, "idx": i} for i, it in enumerate(items)]

    def dataset(**_metadata) -> dict:  # lm-eval calls it as fn(**metadata, **dataset_kwargs)
        return {"test": datasets.Dataset.from_list(rows)}

    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"acc": world.verify(items[doc["idx"]], results[0])}

    return {
        "task": name, "custom_dataset": dataset, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "prompt", "doc_to_target": "answer",
        "process_results": process_results, "generation_kwargs": dict(gen_kwargs),
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


class Evaluator:
    """Greedy evaluation of live models on a world's fixed validation and eval sets; lm-eval tasks are built once.

    Both splits go through one lm-eval call, so their prompts share generation batches.
    """

    def __init__(self, world, tokenizer, batch_size: int = 256, add_special_tokens: bool = False,
                 splits: tuple[str, ...] = ("val", "eval")):
        self.world, self.tokenizer, self.batch_size = world, tokenizer, batch_size
        self.add_special_tokens = add_special_tokens
        all_splits = world.eval_splits()  # World raises on an empty split
        self.items = {sp: {t: list(all_splits[sp][t]) for t in world.tasks} for sp in splits}
        for sp, tasks in self.items.items():
            for t, items in tasks.items():
                if not items:
                    raise HarnessError(f"task {t!r} has an empty {sp} split; set world.n_{sp} > 0")
        self.gen_kwargs = {"until": list(STOP), "max_gen_toks": world.cfg.max_new_tokens, "do_sample": False}
        specs = self._specs()
        self.lm_name = {key: name for key, (name, _, _) in specs.items()}
        self.metric = {key: metric for key, (_, _, metric) in specs.items()}
        from lm_eval.tasks import TaskManager
        with _quiet_lm_eval():  # each custom_dataset task warns about --metadata when built
            self.task_dict = TaskManager(include_defaults=False).load([s for _, s, _ in specs.values()])

    def rebind(self, world, tokenizer, batch_size: int | None = None) -> Evaluator:
        """A shallow copy for another run of the same world (equal `data_key`), sharing the built lm-eval tasks.

        The copy generates with `tokenizer` and reports `world`; the shared tasks keep scoring with the world
        they were built from, whose items and verifiers are the same (the data key covers all of them).
        """
        if world.cfg.data_key() != self.world.cfg.data_key():
            raise ValueError("Evaluator.rebind: the world's data differs from the one the tasks were built for")
        other = copy.copy(self)
        other.world, other.tokenizer = world, tokenizer
        if batch_size is not None:
            other.batch_size = batch_size
        return other

    def _specs(self) -> dict[tuple[str, str], tuple[str, dict | str, str]]:
        """(split, harness task) -> (lm-eval task name, what TaskManager.load takes, per-example metric key)."""
        out = {}
        for split, tasks in self.items.items():
            for t, items in tasks.items():
                name = f"{TASK_PREFIX}{t}" if split == "eval" else f"{TASK_PREFIX}{split}_{t}"
                out[(split, t)] = (name, _toy_task_config(self.world, name, items, self.gen_kwargs), "acc")
        return out

    def evaluate(self, model) -> EvalResult:
        """Evaluate through lm-eval's `evaluate` (not simple_evaluate, which reseeds global RNGs)."""
        from lm_eval import evaluator
        start = time.perf_counter()
        lm = LiveLM(model, self.tokenizer, self.batch_size, self.add_special_tokens)
        with eval_mode(model), _quiet_lm_eval(logging.WARNING):
            out = evaluator.evaluate(lm=lm, task_dict=self.task_dict, bootstrap_iters=0, log_samples=True)
        splits = {}
        for split, tasks in self.items.items():
            correct, responses = {}, {}
            for t, items in tasks.items():
                samples = sorted(out["samples"][self.lm_name[(split, t)]], key=lambda s: s["doc_id"])
                if [s["doc_id"] for s in samples] != list(range(len(items))):
                    raise RuntimeError(f"lm-eval returned doc ids that do not cover the {split} split of task "
                                       f"{t!r} ({len(items)} items)")
                correct[t] = np.array([float(s[self.metric[(split, t)]]) for s in samples])
                responses[t] = [s["filtered_resps"][0] for s in samples]
            splits[split] = self._scores(correct, responses)
        return EvalResult(splits, time.perf_counter() - start)

    def plain_evaluate(self, model) -> EvalResult:
        """The same greedy evaluation as a plain batched `generate` loop, without lm-eval."""
        start = time.perf_counter()
        keys = [(sp, t) for sp, tasks in self.items.items() for t in tasks]
        prompts = [it.prompt for sp, t in keys for it in self.items[sp][t]]
        with eval_mode(model):
            # One call over all splits and tasks, like lm-eval's single generate_until over every request.
            flat = greedy_generate(model, self.tokenizer, prompts, max_new_tokens=self.gen_kwargs["max_gen_toks"],
                                   batch_size=self.batch_size, stop=self.gen_kwargs["until"],
                                   add_special_tokens=self.add_special_tokens)
        collected: dict[str, tuple[dict, dict]] = {sp: ({}, {}) for sp in self.items}
        pos = 0
        for sp, t in keys:
            items = self.items[sp][t]
            resp = flat[pos:pos + len(items)]
            collected[sp][1][t] = resp
            collected[sp][0][t] = np.array([self.world.verify(it, r) for it, r in zip(items, resp)])
            pos += len(items)
        return EvalResult({sp: self._scores(c, r) for sp, (c, r) in collected.items()}, time.perf_counter() - start)

    @staticmethod
    def _scores(correct: dict[str, np.ndarray], responses: dict[str, list[str]]) -> SplitScores:
        acc = {t: 100.0 * float(c.mean()) for t, c in correct.items()}
        return SplitScores(acc=acc, correct=correct, responses=responses)
