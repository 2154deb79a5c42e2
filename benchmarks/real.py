"""Real worlds: a Hugging Face causal LM on real lm-eval tasks, described by a YAML preset.

The base model is a local folder or a hub id at a pinned revision, read from
the local Hugging Face cache (`harness fetch <preset>` fills it on a machine
with network; nothing is downloaded at run time). The target and the retention
tasks are lm-eval task names, optionally pointed at local data files in the
hub dataset's schema, so everything runs offline. lm-eval's own task
definitions do the rest:

* **prompts**: the context lm-eval builds for a doc, by lm-eval's own
  `fewshot_context` (a task's description and the world's system prompt in the
  system message, the model's chat template when the world uses one): the same
  text lm-eval evaluates on, so training, sampling and evaluation see the same ids;
* **expert labels**: the task's `doc_to_target` on its training docs, or a
  declared field of the local data (e.g. a teacher's reasoning trace);
* **verifier**: the task's own filters and metric on one response, cut at the
  task's stop strings like lm-eval cuts generations: the training reward is the
  evaluation score (`benchmarks.lmeval_tasks.RealTask.score`);
* **splits**: the target's training docs, shuffled by the world seed, give the
  training items and, after them, the held-out items (PLD labels, KL prompts);
  every task's eval docs, shuffled likewise, give disjoint validation and eval
  sets.
"""
from __future__ import annotations

import hashlib
import json
import random
from functools import cached_property
from importlib.metadata import version
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.lmeval_checks import check_context, check_first_docs, check_rewarded, read_train_file
from benchmarks.lmeval_lookup import loaded_tasks
from benchmarks.lmeval_tasks import RealTask, TaskSource, chat_template
from benchmarks.staging import real_fetch, real_requirements
from harness.errors import HarnessError
from harness.greedy import cut_at_stop
from harness.modeling import local_model
from harness.world import EvalTask, Item, World, cache_root


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class TargetSource(TaskSource):
    """The target task: an lm-eval task whose training docs (with expert labels) are trained on."""

    train_file: str | None = None
    """Local JSONL/JSON/parquet of training docs in the task's schema (None: the task's own training split); for
    tasks without one (IFEval) or expert data from elsewhere (a teacher's traces)."""
    label_field: str | None = None
    """Field of a training doc holding the expert label (e.g. a teacher's trace); None: the task's doc_to_target."""


class RealWorldConfig(_Strict):
    """A real world: base model, target task and retention tasks (lm-eval names), sizes and chat settings."""

    kind: Literal["real"] = "real"
    """World kind: `real` (this) or `toy`."""
    name: str = "real"
    """Preset name (`harness list` shows the shipped ones)."""
    source: str = ""
    """Where the setting comes from (paper, repository) and what this preset changes."""
    base_model: str = ""
    """Local model folder (save_pretrained) or hub id (then `revision` pins it; fetched by `harness fetch`)."""
    revision: str | None = None
    """Commit (or tag) of a hub model; None: whatever the local cache's `main` points to."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code (only for architectures transformers lacks)."""
    chat_template: bool = True
    """Render every prompt (training, sampling, PLD/KL sets, lm-eval) with the tokenizer's chat template."""
    system_prompt: str | None = None
    """System instruction, as lm-eval's `system_instruction`: it opens the system message, followed by the task's
    description (lm-eval's rule); None: a task's description alone is the system message, and a task without one
    keeps the template's default. Without a chat template both lead the plain-text prompt."""
    target: TargetSource = Field(default_factory=lambda: TargetSource(task="gsm8k"))
    """The task trained on."""
    retention: list[TaskSource] = Field(default_factory=list)
    """Non-target tasks: the drop averages their accuracies' changes."""
    n_train: int = Field(1024, ge=1)
    """Training docs of the target (the first n after a seeded shuffle; all if fewer)."""
    n_val: int = Field(200, ge=1)
    """Validation docs of the target (drawn from its eval docs)."""
    n_eval: int = Field(500, ge=1)
    """Eval docs of the target (disjoint from validation and held-out)."""
    n_val_nontarget: int = Field(200, ge=1)
    """Validation docs per retention task."""
    n_eval_nontarget: int = Field(500, ge=1)
    """Eval docs per retention task."""
    n_heldout: int = Field(100, ge=1)
    """Target training docs held out of training (with expert labels): PLD labels and KL-to-base prompts."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Cap on sampled tokens for rollouts and own samples (None: the target task's max_gen_toks)."""
    seed: int = 0
    """World seed: the shuffles that draw the splits."""

    @property
    def target_task(self) -> str:
        """Name of the target task."""
        return self.target.task

    def summary(self) -> str:
        """One line: base model, target and retention tasks."""
        keep = ", ".join(f"`{r.task}`" for r in self.retention)
        at = f"@{self.revision[:10]}" if self.revision else ""
        return (f"`{self.name}` (real, base `{self.base_model}{at}`, world seed {self.seed}): target "
                f"`{self.target.task}`, retention {keep}")

    def data_key(self) -> str:
        """Hash of everything that determines the base's scores (with lm-eval's version: task code can change)."""
        data = self.model_dump(exclude={"name", "source", "kind"}) | {"lm_eval": version("lm-eval")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _shuffled(n: int, seed: int, task: str) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{task}").shuffle(order)
    return order


class RealWorld(World):
    """A resolved real world: lm-eval tasks loaded (offline), splits drawn, the base model's folder resolved."""

    Config = RealWorldConfig
    requirements = staticmethod(real_requirements)  # the model, tokenizer, task data and nltk data it reads
    stage = staticmethod(real_fetch)  # `harness fetch`: downloads them (needs the network)
    dry_run_checks = check_context  # every prompt plus its generation budget within the model's positions

    def __init__(self, cfg: RealWorldConfig):
        if not cfg.base_model:
            raise HarnessError("world.base_model is empty; set a local model folder or a hub id")
        names = [cfg.target.task, *[r.task for r in cfg.retention]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise HarnessError(f"task {dup[0]!r} is listed twice in the world; list each lm-eval task once")
        if not cfg.retention:
            raise HarnessError("world.retention is empty; list at least one lm-eval task to measure forgetting on")
        self.cfg = cfg
        self.target = cfg.target.task
        self.nontarget = [r.task for r in cfg.retention]
        self.real: dict[str, RealTask] = loaded_tasks([cfg.target, *cfg.retention],
                                                      cache_root() / "lmeval-tasks" / cfg.data_key())
        self._docs = {t: rt.eval_docs() for t, rt in self.real.items()}
        check_first_docs(self)
        self._draw_splits()

    def check_method(self, method: str) -> None:
        """Refuse a method that trains on the verifier's reward when the target cannot give one from sampled text."""
        check_rewarded(self, method)

    def _draw_splits(self) -> None:
        """Doc ids per (split, task): a seeded shuffle of each task's eval docs, cut into validation and eval."""
        c = self.cfg
        self.doc_ids: dict[str, dict[str, list[int]]] = {"val": {}, "eval": {}}
        for t, docs in self._docs.items():
            n_val, n_eval = (c.n_val, c.n_eval) if t == self.target else (c.n_val_nontarget, c.n_eval_nontarget)
            if len(docs) < n_val + n_eval:
                raise HarnessError(f"task {t!r} has {len(docs)} eval docs but the world asks for {n_val} validation "
                                   f"+ {n_eval} eval; lower world.n_val/n_eval (or the _nontarget ones) or give more data")
            order = _shuffled(len(docs), c.seed, t)
            self.doc_ids["val"][t], self.doc_ids["eval"][t] = order[:n_val], order[n_val:n_val + n_eval]

    @cached_property
    def tokenizer(self):
        """The base model's tokenizer (for its chat template)."""
        from harness.modeling import load_tokenizer
        return load_tokenizer(self.base_path(), chat_template=self.cfg.chat_template,
                              trust_remote_code=self.cfg.trust_remote_code, system_prompt=self.cfg.system_prompt)

    @cached_property
    def _chat(self):
        """The chat template as lm-eval applies it, or None when the world uses none."""
        return chat_template(self.tokenizer) if self.cfg.chat_template else None

    def prompt(self, task: str, doc: dict) -> str:
        """A doc's prompt exactly as lm-eval renders it for this world: the task's description and
        world.system_prompt in the system message, the chat template when the world uses one (else plain text)."""
        return self.real[task].prompt(doc, self.cfg.system_prompt, self._chat)

    def _item(self, task: str, doc: dict, key: str, label: str = "") -> Item:
        rt = self.real[task]
        try:
            answer = rt.label(doc)
        except HarnessError:  # a task without answer text (IFEval's checks are its gold): nothing to show
            answer = ""
        return Item(task, self.prompt(task, doc), answer, label, key)

    @property
    def max_new_tokens(self) -> int:
        """Rollout cap: world.max_new_tokens, else the target task's max_gen_toks."""
        return self.cfg.max_new_tokens or int(self.real[self.target].gen_kwargs.get("max_gen_toks", 256))

    @cached_property
    def _train_order(self) -> list[int]:
        """Seeded order of the target's training docs: the first n_train train, the next n_heldout are held out."""
        c, docs = self.cfg, self._train_docs
        if len(docs) < c.n_train + c.n_heldout:
            raise HarnessError(f"target {self.target!r} has {len(docs)} training docs but the world asks for "
                               f"{c.n_train} train + {c.n_heldout} held out; lower world.n_train or world.n_heldout")
        field = c.target.label_field
        if field is not None and docs and field not in docs[0]:
            raise HarnessError(f"world.target.label_field {field!r} is not a field of {self.target!r}'s training "
                               f"docs (fields: {', '.join(docs[0])})")
        return _shuffled(len(docs), c.seed, f"train:{self.target}")[:c.n_train + c.n_heldout]

    def _labelled(self, ids: list[int]) -> list[Item]:
        rt, field, docs = self.real[self.target], self.cfg.target.label_field, self._train_docs
        return [self._item(self.target, docs[i], f"train:{i}", str(docs[i][field]) if field else rt.label(docs[i]))
                for i in ids]

    @cached_property
    def train_items(self) -> list[Item]:
        """The target's training docs (seeded order) with their expert labels."""
        return self._labelled(self._train_order[:self.cfg.n_train])

    @cached_property
    def heldout_items(self) -> list[Item]:
        """Held-out training docs of the target (never trained on), with expert labels: PLD labels, KL prompts."""
        items = self._labelled(self._train_order[self.cfg.n_train:])
        if not any(it.label.strip() for it in items):
            raise HarnessError(f"target {self.target!r} has empty expert labels; set world.target.label_field to "
                               f"the field of its training docs that holds them")
        return items

    def split_items(self, split: str) -> dict[str, list[Item]]:
        """Items of the validation or eval split, per task, in doc-id order of the draw."""
        return {t: [self._item(t, self._docs[t][i], f"eval:{i}") for i in ids]
                for t, ids in self.doc_ids[split].items()}

    @cached_property
    def _train_docs(self) -> list[dict]:
        """The target's training docs: `target.train_file`, else the task's training split."""
        path = self.cfg.target.train_file
        if path is None:
            return self.real[self.target].train_docs()
        return read_train_file(path)

    def _doc(self, item: Item) -> dict:
        kind, i = item.key.split(":")
        return (self._train_docs if kind == "train" else self._docs[item.task])[int(i)]

    def verify(self, item: Item, response: str) -> float:
        """The task's own score of the response, cut at the task's stop strings as lm-eval cuts generations."""
        rt = self.real[item.task]
        until = rt.gen_kwargs.get("until") or []
        return rt.score(self._doc(item), cut_at_stop(response, [until] if isinstance(until, str) else list(until)))

    def eval_tasks(self) -> list[EvalTask]:
        """lm-eval's own task per world task; both splits are doc-id subsets of it, read at its declared metric."""
        out = []
        for t, rt in self.real.items():
            refs = rt.doc_refs()
            out.append(EvalTask(task=t, lm_tasks=rt.lm_tasks(), metric=rt.metric, filter=rt.filter_name,
                                docs={sp: [refs[i] for i in self.doc_ids[sp][t]] for sp in ("val", "eval")}))
        return out

    def eval_options(self) -> dict:
        """Chat template and system prompt for lm-eval, the same switch as every training prompt."""
        return {"apply_chat_template": self.cfg.chat_template, "system_instruction": self.cfg.system_prompt}

    def data_key(self) -> str:
        """Hash of the world config and lm-eval's version."""
        return self.cfg.data_key()

    def tags(self) -> dict[str, str]:
        """World, target, base model and lm-eval task versions."""
        versions = {f"task_version/{t}": str(rt.version) for t, rt in self.real.items()}
        return {**super().tags(), "base_model": self.cfg.base_model, "lm_eval": version("lm-eval"), **versions}

    def load_kwargs(self) -> dict:
        """trust_remote_code, as the preset says."""
        return {"trust_remote_code": self.cfg.trust_remote_code}

    def base_path(self, progress: bool = True) -> str:
        """The local model folder: the path itself, or the hub id's snapshot in the local HF cache."""
        return local_model(self.cfg.base_model, self.cfg.revision)
