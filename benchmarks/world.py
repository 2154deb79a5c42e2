"""Worlds: a base model, one target task, the retention tasks, and their data.

The embedded `toy` world is built so that it forgets the way real LMs do, in
Retaining by Doing's two-mode picture:

* **A multi-modal base.** The base is pretrained (by `benchmarks.pretrain`) on
  six verifiable string tasks. On the target task its pretraining labels are
  *bimodal*: the correct answer or the family's plausible wrong mode (sort
  descending instead of ascending, copy instead of reverse, ...), with the
  correct mode preferred on ~30% of prompts (a learnable feature of the
  prompt). So the skill is present but a wrong mode is preferred: greedy target
  accuracy is ~30%, sampled accuracy higher, pass@8 high -- exactly where RL
  and on-policy SFT can *re-weight modes* without moving the rest of the model.
  (A target whose low accuracy comes from a missing skill gives no usable
  front: TOY-WORLD-NOTES.md.)
* **Retention tasks the base knows well** (>= 70%): the other families,
  learned with unimodal labels.
* **An off-policy teacher.** Expert labels are correct, verifier-accepted
  solutions in a style the base never produced: `worked` writes comma-separated
  intermediate steps then `|answer` (separator tokens unseen in pretraining,
  ~9 nats/token under the base); `partial` writes only the first step then
  `|answer`; `mild` only prefixes `|`; `sparse` prefixes it on a quarter of
  the prompts; `own` is the base's format (the on-policy end of the dial). Fitting such labels forces large
  changes to shared weights (new token embeddings, new transition patterns),
  which leak into the tasks whose prompts look alike -- the mechanism by which
  off-policy SFT forgets.
* **Disjoint splits** by a hash of the payload (train 70% / validation 10% /
  eval 10% / held-out 10%); everything is deterministic from the world seed; nothing
  comes from the network.
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.tasks import FAMILIES, Task
from harness.errors import HarnessError, unknown
from harness.world import EvalTask, Item, Requirement, World, cache_root

from harness.greedy import STOP  # toy responses are one line
from benchmarks.toy_eval import TASK_PREFIX, toy_task_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelShape(_Strict):
    """Architecture of the toy base (a LlamaForCausalLM)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 3
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide by it)."""
    intermediate_size: int = 384
    """FFN width."""
    max_positions: int = 64
    """Maximum sequence length."""


class PretrainConfig(_Strict):
    """How the harness pretrains the toy base (once per world config; cached)."""

    steps: int = 1050
    """Optimizer steps."""
    batch_size: int = 256
    """Sequences per step, tasks mixed with equal weight."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay to 10%)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    p_correct_favoured: float = 0.8
    """Target task: probability of the correct mode on prompts whose feature favours it."""
    p_correct_other: float = 0.2
    """Target task: probability of the correct mode on the other prompts (~70%). Greedy accuracy does not depend
    on it while it stays below 0.5, but sampled coverage does: it is the knob of Self-SFT's stale data
    (`sweeps/self-sft-coverage.yaml` sets 0.02, where samples drawn once from θ0 cover ~38% of the training
    prompts and per-epoch samples ~98%)."""
    hint_frac: float = Field(0.0, ge=0, le=1)
    """Share of the target task's pretraining sequences whose context carries a hint, as Hinted Decoding shows
    it (`idft.hint_template`'s default "{label}:{prompt}", label = the world's teacher label for that payload),
    trained on the correct answer in the base's own format. The base so learns to *read* a hint, as HD assumes
    of real LMs, yet never *writes* the teacher's format (a hint is context, never a trained response): the
    labels stay off-policy. The hinted sequences replace that share of the default stream's target sequences
    one for one (same payloads, same order; the draw uses its own generator), so such a base differs from the
    default one only by them. Retention tasks get no hints: HD only ever hints target prompts, and their
    pretraining stays exactly the default's. 0 (the default world): no hints, the pre-existing base and keys.
    Above 0 the base depends on `teacher_style` too (`WorldConfig.base_key`)."""


class WorldConfig(_Strict):
    """The toy world: which tasks, which target, which teacher, which base."""

    kind: Literal["toy"] = "toy"
    """World kind: `toy` (this embedded world) or `real` (a Hugging Face model on lm-eval tasks)."""
    name: str = "toy"
    """World preset name (`harness list` shows them)."""
    tasks: list[str] = Field(default_factory=lambda: ["sort", "rev", "add", "max", "shift"])
    """Task families in the world; the target plus the retention (non-target) tasks."""
    target: str = "sort"
    """The task trained on; every other task is a retention task."""
    teacher_style: Literal["worked", "partial", "mild", "sparse", "own"] = "worked"
    """Expert label style, from far off-policy to the base's format: `worked`, `partial`, `mild`, `sparse`, `own`
    (`benchmarks.tasks`; the same prompts in every style; the base does not depend on it at hint_frac 0)."""
    seed: int = 0
    """World seed: data splits and the pretrained base (two seeds = two bases)."""
    n_train: int = 1024
    """Training prompts of the target task."""
    n_eval: int = 200
    """Greedy evaluation prompts of the target task."""
    n_eval_nontarget: int = 100
    """Greedy evaluation prompts per retention task (the drop averages over all of them: 400 on toy)."""
    n_val: int | None = None
    """Validation prompts of the target task (None: as many as n_eval). Every selection (g, learning rate,
    checkpoint, Optuna's objective) reads validation; every reported number reads eval."""
    n_val_nontarget: int | None = None
    """Validation prompts per retention task (None: as many as n_eval_nontarget)."""
    n_heldout: int = 200
    """Held-out target prompts for PLD (with expert labels) and KL-to-base (with base samples)."""
    max_new_tokens: int = 24
    """Generation cap (a damaged model may never emit its end token)."""
    base_model: str | None = None
    """Path or hub id of a pretrained base; None builds the toy base."""
    model: ModelShape = Field(default_factory=ModelShape)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    @property
    def target_task(self) -> str:
        """Name of the target task."""
        return self.target

    def summary(self) -> str:
        """One line: the world's seed, target, retention tasks and teacher."""
        keep = ", ".join(f"`{t}`" for t in self.tasks if t != self.target)
        return (f"`{self.name}` (world seed {self.seed}): target `{self.target}`, retention {keep}, "
                f"teacher style `{self.teacher_style}`")

    def base_key(self) -> str:
        """Hash of everything that determines the pretrained base."""
        fields = {"tasks", "target", "seed", "model", "pretrain", "base_model"}
        if self.pretrain.hint_frac > 0:  # the hints are teacher labels
            fields.add("teacher_style")
        return _hash(_key_dump(self, include=fields))

    def data_key(self) -> str:
        """Hash of everything that determines the base's scores (base + data + eval settings)."""
        return _hash(_key_dump(self, exclude={"name", "kind"}))


# Fields added after bases had been cached (path in the dump -> default). At their default they are left out of
# the dumps that base_key and data_key hash, so every world that does not set them keeps its keys, and with them
# its cached base (minutes of pretraining) and base scores; any other value is hashed as usual.
KEY_OMITTED_AT_DEFAULT: dict[tuple[str, ...], object] = {("pretrain", "hint_frac"): 0.0}


def _key_dump(cfg: WorldConfig, **kw) -> dict:
    """`cfg.model_dump(**kw)` less the KEY_OMITTED_AT_DEFAULT fields that are at their default."""
    data = cfg.model_dump(**kw)
    for (*parents, leaf), default in KEY_OMITTED_AT_DEFAULT.items():
        d = data
        for p in parents:
            d = d.get(p, {})
        if leaf in d and d[leaf] == default:
            del d[leaf]
    return data


def _hash(data: dict) -> str:
    """12 hex digits of the sha256 of a dump's canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


class ToyWorld(World):
    """The resolved toy world: tasks, splits, verifiers, and the base model (pretrained on first use)."""

    Config = WorldConfig

    @classmethod
    def check_config(cls, cfg: WorldConfig) -> None:
        """Task and target names and split sizes, checked by building the world (no data is drawn yet)."""
        cls(cfg)

    @classmethod
    def requirements(cls, cfg: WorldConfig) -> list[Requirement]:
        """The base model: shipped with the project or pretrained here, on first use."""
        from benchmarks.shipped_bases import shipped_base
        base = cls(cfg).cache_dir / "base"
        how = ("shipped, installed on first use" if shipped_base(cfg.base_key())
               else "pretrained here on first use: minutes on a CPU")
        return [Requirement(f"toy base model ({how})", str(base), base.exists())]

    @classmethod
    def stage(cls, cfg: WorldConfig, progress: bool = True, rebuild_base: bool = False) -> None:
        """Install the shipped base, or pretrain it (`rebuild_base`: pretrain it here, replacing a cached copy)."""
        cls(cfg).base_path(progress=progress, rebuild=rebuild_base)

    def __init__(self, cfg: WorldConfig):
        for t in cfg.tasks:
            if t not in FAMILIES:
                raise unknown("task", t, FAMILIES, "Set world.tasks to known task names.")
        if cfg.target not in cfg.tasks:
            raise unknown("target task", cfg.target, cfg.tasks, "Set world.target to one of the world's tasks.")
        sizes = {"n_eval": cfg.n_eval, "n_eval_nontarget": cfg.n_eval_nontarget, "n_val": cfg.n_val,
                 "n_val_nontarget": cfg.n_val_nontarget}
        empty = [f"world.{k}={v}" for k, v in sizes.items() if v is not None and v < 1]
        if empty:
            raise HarnessError(f"empty evaluation split ({', '.join(empty)}); set it > 0")
        self.cfg = cfg
        self.families = {t: Task(FAMILIES[t], cfg) for t in cfg.tasks}
        self.target = cfg.target
        self.nontarget = [t for t in cfg.tasks if t != cfg.target]

    @property
    def tasks(self) -> list[str]:
        """Every task, in the config's order."""
        return list(self.cfg.tasks)

    @property
    def max_new_tokens(self) -> int:
        """Generation cap (a damaged model may never emit its end token)."""
        return self.cfg.max_new_tokens

    def data_key(self) -> str:
        """Hash of the world config (base, data, evaluation settings)."""
        return self.cfg.data_key()

    def tags(self) -> dict[str, str]:
        """World, target and the teacher's label style."""
        return {**super().tags(), "teacher_style": self.cfg.teacher_style}

    @cached_property
    def train_items(self) -> list[Item]:
        """Target-task training problems with their expert labels."""
        return self.families[self.target].items("train", self.cfg.n_train)

    def split_sizes(self, split: str) -> tuple[int, int]:
        """(target, per-retention-task) number of prompts of an evaluation split ("val" or "eval")."""
        c = self.cfg
        if split == "eval":
            return c.n_eval, c.n_eval_nontarget
        return (c.n_eval if c.n_val is None else c.n_val,
                c.n_eval_nontarget if c.n_val_nontarget is None else c.n_val_nontarget)

    def split_items(self, split: str) -> dict[str, list[Item]]:
        """The first items of a split's hash bucket, per task."""
        n_target, n_other = self.split_sizes(split)
        out = {t: task.items(split, n_target if t == self.target else n_other) for t, task in self.families.items()}
        for t, items in out.items():
            if not items:
                raise HarnessError(f"task {t!r} has an empty {split} split; set world.n_{split} > 0")
        return out

    @cached_property
    def heldout_items(self) -> list[Item]:
        """Held-out target problems: PLD labels and KL-to-base prompts."""
        return self.families[self.target].items("heldout", self.cfg.n_heldout)

    def verify(self, item: Item, response: str) -> float:
        """Reward of a response to an item (the same function evaluation uses)."""
        return self.families[item.task].verify(item, response)

    def eval_tasks(self) -> list[EvalTask]:
        """Inline lm-eval tasks, one per (split, task), scored by `verify` through `process_results`."""
        gen_kwargs = {"until": list(STOP), "max_gen_toks": self.cfg.max_new_tokens, "do_sample": False}
        out = []
        splits = self.eval_splits()
        for t in self.tasks:
            names = {sp: f"{TASK_PREFIX}{t}" if sp == "eval" else f"{TASK_PREFIX}{sp}_{t}" for sp in splits}
            configs = {names[sp]: toy_task_config(self.verify, names[sp], splits[sp][t], gen_kwargs) for sp in splits}
            docs = {sp: [(names[sp], i) for i in range(len(splits[sp][t]))] for sp in splits}
            out.append(EvalTask(task=t, lm_tasks=configs, metric="acc", docs=docs, restrict=False))
        return out

    @property
    def cache_dir(self) -> Path:
        """Folder holding this world's base model and base scores (keyed by what determines the base)."""
        return cache_root() / "worlds" / f"{self.cfg.name}-{self.cfg.base_key()}"

    def base_path(self, progress: bool = True, rebuild: bool = False) -> str:
        """Path (or hub id) of the base model: the shipped base installed, or the toy base pretrained, on first use
        (`rebuild`: pretrained here, replacing the cached copy)."""
        if self.cfg.base_model is not None:
            return self.cfg.base_model
        from benchmarks.pretrain import ensure_base
        return str(ensure_base(self, self.cache_dir / "base", progress=progress, rebuild=rebuild))
