"""Greedy evaluation of a live (in-memory) model through lm-eval, on the tasks a world declares.

A world lists its tasks as `harness.world.EvalTask`s: the toy world as inline
lm-eval configs scored by its own verifier, a real world as lm-eval's own task
definitions (generate_until and multiple-choice loglikelihood) with the doc ids
of each split. Every task of both splits goes through one `evaluate` call, so
prompts share generation batches; per-example correctness is read from
lm-eval's logged samples (one declared filter and metric per task), which is
what the paired bootstrap needs.

The model is wrapped in a thin `lm_eval.api.model.LM` (`LiveLM`), not in
`HFLM`: HFLM imports `accelerate` at module level (only in our `gpu` extra), and
on a model object it also calls `model.eval()`/`tie_weights()` and never
restores the mode. LiveLM's greedy loop is `greedy_generate`, which
`plain_evaluate` calls directly, so the two paths differ only by lm-eval's
machinery: that difference is what `harness/bench/eval_overhead.py` measures.
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

from harness import lmeval_api
from harness.errors import HarnessError
from harness.greedy import STOP, greedy_generate
from harness.metrics import eval_mode

# lm-eval logs INFO lines on every evaluate() call; a training loop evaluates often.
logging.getLogger("lm_eval").setLevel(logging.WARNING)
FEWSHOT_SEED = 1234  # lm_eval.simple_evaluate's default fewshot_random_seed; evaluate() itself never reseeds



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
    try:
        with lmeval_api.request_bars_off():
            yield
    finally:
        logger.setLevel(old)


class LiveLM(LM):
    """A minimal lm-eval LM over an in-memory transformers model: greedy `generate_until` and `loglikelihood`."""

    def __init__(self, model, tokenizer, batch_size: int, add_special_tokens: bool = False,
                 score_batch_size: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.add_special_tokens = add_special_tokens
        self.score_batch_size = score_batch_size or batch_size

    @property
    def tokenizer_name(self) -> str:
        """Identifies the chat template in lm-eval's request cache keys."""
        return str(getattr(self.tokenizer, "name_or_path", "live")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's own chat template, as text, applied as lm-eval's HFLM applies it (the same function
        renders a real world's training prompts: benchmarks.lmeval_tasks.chat_template)."""
        from benchmarks.lmeval_tasks import chat_template
        return chat_template(self.tokenizer)(chat_history, add_generation_prompt)

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

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split the way lm-eval's HFLM splits them.

        Trailing spaces of the context move to the continuation, and the pair is tokenized as one text, so a
        word's leading space stays in its token as it would in running text.
        """
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        enc = lambda text: self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)  # noqa: E731
        whole, ctx = enc(context + continuation), enc(context)
        if not ctx:  # nothing to condition on: predict from the end token, as HFLM does
            return [self.tokenizer.eos_token_id], whole
        return ctx, whole[len(ctx):]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is greedy) per request, scored in `score_batch_size` batches."""
        from harness.metrics import continuation_loglikelihood
        pairs = [self._encode_pair(*r.args) for r in requests]
        return continuation_loglikelihood(self.model, [c for c, _ in pairs], [x for _, x in pairs],
                                          self.score_batch_size, self.tokenizer.pad_token_id)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("LiveLM serves generate_until and loglikelihood tasks; perplexity tasks need HFLM")


def _load_tasks(specs: list) -> dict:
    """{lm-eval task name: Task} for every spec, building config dicts and names once."""
    from lm_eval.tasks import TaskManager
    ready, to_load = {}, []
    for spec in specs:
        for name, task in spec.lm_tasks.items():
            if isinstance(task, (dict, str)):
                to_load.append(task)
            else:
                ready[name] = task
    if to_load:
        with _quiet_lm_eval():  # each custom_dataset task warns about --metadata when built
            ready.update(TaskManager(include_defaults=False).load(to_load))
    return ready


def requested_docs(specs, splits: tuple[str, ...]) -> dict[str, list[int]]:
    """lm-eval's `samples=` argument: per lm-eval task, the doc ids the splits need (restricted specs only)."""
    out: dict[str, set[int]] = {}
    for spec in specs:
        if spec.restrict:
            for sp in splits:
                for name, i in spec.docs[sp]:
                    out.setdefault(name, set()).add(int(i))
    return {name: sorted(ids) for name, ids in out.items()}


def read_split(spec, split: str, samples: dict[str, list[dict]]) -> tuple[np.ndarray, list[str]]:
    """Per-example correctness and responses of one split of a task, in item order, from lm-eval's logged samples."""
    by_doc = {(name, s["doc_id"]): s for name in {n for n, _ in spec.docs[split]} for s in samples.get(name, [])
              if spec.filter is None or s.get("filter") == spec.filter}
    missing = [ref for ref in spec.docs[split] if ref not in by_doc]
    if missing:
        raise RuntimeError(f"lm-eval returned doc ids that do not cover the {split} split of task {spec.task!r} "
                           f"({len(missing)} of {len(spec.docs[split])} items missing, e.g. {missing[0]})")
    rows = [by_doc[ref] for ref in spec.docs[split]]
    return np.array([_value(r[spec.metric]) for r in rows]), [_response(r) for r in rows]


def _value(v) -> float:
    """A logged per-example metric as a number (a list, e.g. IFEval's inst_level_*, is its mean)."""
    if isinstance(v, list):
        return sum(map(float, v)) / max(len(v), 1)
    return float(v)


def _response(sample: dict) -> str:
    """The scored response of a logged sample: generated text, or the chosen option's index for multiple choice."""
    resp = sample["filtered_resps"][0] if sample["filtered_resps"] else ""
    if isinstance(resp, (list, tuple)):  # loglikelihood: one (logprob, is_greedy) per option
        lls = [r[0] if isinstance(r, (list, tuple)) else r for r in sample["filtered_resps"]]
        return str(int(np.argmax(lls)))
    return str(resp)


class Evaluator:
    """Greedy evaluation of live models on a world's fixed validation and eval sets; lm-eval tasks are built once.

    Both splits go through one lm-eval call, so their prompts share generation batches.
    """

    def __init__(self, world, tokenizer, batch_size: int = 256, add_special_tokens: bool = False,
                 splits: tuple[str, ...] = ("val", "eval"), score_batch_size: int | None = None):
        self.world, self.tokenizer, self.batch_size = world, tokenizer, batch_size
        self.add_special_tokens, self.score_batch_size = add_special_tokens, score_batch_size
        all_splits = world.eval_splits()  # a world raises on an empty split
        self.items = {sp: {t: list(all_splits[sp][t]) for t in world.tasks} for sp in splits}
        for sp, tasks in self.items.items():
            for t, items in tasks.items():
                if not items:
                    raise HarnessError(f"task {t!r} has an empty {sp} split; set world.n_{sp} > 0")
        self.specs = {spec.task: spec for spec in world.eval_tasks()}
        self.options = world.eval_options()
        self.task_dict = _load_tasks(list(self.specs.values()))
        # lm-eval scores only these doc ids of a task that holds both splits (real worlds); absent: every doc.
        self.samples = requested_docs(self.specs.values(), splits)

    def rebind(self, world, tokenizer, batch_size: int | None = None,
               score_batch_size: int | None = None) -> Evaluator:
        """A shallow copy for another run of the same world (equal `data_key`), sharing the built lm-eval tasks.

        The copy generates with `tokenizer` and reports `world`; the shared tasks keep scoring with the world
        they were built from, whose items and verifiers are the same (the data key covers all of them).
        """
        if world.data_key() != self.world.data_key():
            raise ValueError("Evaluator.rebind: the world's data differs from the one the tasks were built for")
        other = copy.copy(self)
        other.world, other.tokenizer = world, tokenizer
        if batch_size is not None:
            other.batch_size = batch_size
        if score_batch_size is not None:
            other.score_batch_size = score_batch_size
        return other

    def evaluate(self, model) -> EvalResult:
        """Evaluate through lm-eval's `evaluate` (not simple_evaluate, which reseeds global RNGs)."""
        from lm_eval import evaluator
        start = time.perf_counter()
        lm = LiveLM(model, self.tokenizer, self.batch_size, self.add_special_tokens, self.score_batch_size)
        for task in self.task_dict.values():  # every call draws the same few-shot exemplars (simple_evaluate's seed)
            getattr(task, "set_fewshot_seed", lambda seed: None)(FEWSHOT_SEED)
        with eval_mode(model), _quiet_lm_eval(logging.WARNING):
            out = evaluator.evaluate(lm=lm, task_dict=self.task_dict, bootstrap_iters=0, log_samples=True,
                                     samples=self.samples or None, **self.options)
        splits = {}
        for split, tasks in self.items.items():
            correct, responses = {}, {}
            for t in tasks:
                correct[t], responses[t] = read_split(self.specs[t], split, out["samples"])
            splits[split] = self._scores(correct, responses)
        return EvalResult(splits, time.perf_counter() - start)

    def plain_evaluate(self, model) -> EvalResult:
        """The same greedy evaluation as a plain batched `generate` loop, without lm-eval (one-line answers)."""
        start = time.perf_counter()
        keys = [(sp, t) for sp, tasks in self.items.items() for t in tasks]
        prompts = [it.prompt for sp, t in keys for it in self.items[sp][t]]
        with eval_mode(model):
            # One call over all splits and tasks, like lm-eval's single generate_until over every request.
            flat = greedy_generate(model, self.tokenizer, prompts, max_new_tokens=self.world.max_new_tokens,
                                   batch_size=self.batch_size, stop=list(STOP),
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
