"""lm-eval groups and tags (mmlu, mmlu_pro, hendrycks_math) as one harness task each.

A group's subtasks are loaded one by one like any task (`benchmarks.lmeval_tasks.load_task`); their eval docs are
concatenated in the group's listed order and each doc carries the index of its subtask, so its prompt, label and
score come from its own subtask, and lm-eval evaluates every subtask with the doc ids the world's splits drew.
"""
from __future__ import annotations

from typing import Any

from benchmarks.lmeval_lookup import find_entry
from benchmarks.lmeval_tasks import RealTask, TaskSource
from harness import lmeval_api
from harness.errors import HarnessError

SUBTASK = "_harness_subtask"  # key a group's docs carry: which of its subtasks the doc belongs to


class RealGroup:
    """An lm-eval group or tag (mmlu: 57 subjects) as ONE harness task: its subtasks' docs, concatenated in
    subtask order, each prompted and scored by its own subtask; accuracy is per example over all of them (lm-eval's
    size-weighted mean), which is what the paired bootstrap needs."""

    def __init__(self, source: TaskSource, leaves: list[RealTask]):
        kinds = {leaf.output_type for leaf in leaves}
        if len(kinds) != 1:
            raise HarnessError(f"lm-eval group {source.task!r} mixes output types {sorted(kinds)}; list its "
                               f"subtasks of one type as separate tasks")
        self.source, self.leaves, self.name = source, leaves, f"harness_real_{source.task}"
        first = leaves[0]
        self.output_type, self.filter_name, self.metric = first.output_type, first.filter_name, first.metric
        self.gen_kwargs, self.target_delimiter = first.gen_kwargs, first.target_delimiter
        self.version = ",".join(sorted({str(leaf.version) for leaf in leaves}))

    def _tagged(self, docs_of) -> list[dict]:
        return [{**doc, SUBTASK: j} for j, leaf in enumerate(self.leaves) for doc in docs_of(leaf)]

    def eval_docs(self) -> list[dict]:
        """Every subtask's eval docs, in subtask order, each tagged with its subtask."""
        return self._tagged(RealTask.eval_docs)

    def train_docs(self) -> list[dict]:
        """The training docs of the subtasks that have a training split (HarnessError if none has)."""
        docs = self._tagged(lambda leaf: leaf.train_docs() if leaf.task.has_training_docs() else [])
        if not docs:
            raise HarnessError(f"no subtask of lm-eval group {self.source.task!r} has a training split; give "
                               f"target.train_file")
        return docs

    def _leaf(self, doc: dict) -> RealTask:
        return self.leaves[doc[SUBTASK]] if SUBTASK in doc else self.leaves[0]

    def prompt(self, doc: dict, system_instruction: str | None = None, chat: Any = None) -> str:
        """The doc's subtask's context (its own description; see `RealTask.prompt`)."""
        return self._leaf(doc).prompt(doc, system_instruction, chat)

    def label(self, doc: dict) -> str:
        """The doc's subtask's expert answer text."""
        return self._leaf(doc).label(doc)

    def score(self, doc: dict, response: str) -> float:
        """The doc's subtask's own score of the response."""
        return self._leaf(doc).score(doc, response)

    def preflight(self) -> None:
        """Every subtask's preflight."""
        for leaf in self.leaves:
            leaf.preflight()

    def doc_refs(self) -> list[tuple[str, int]]:
        """(subtask's lm-eval name, doc id) of each doc, in `eval_docs` order."""
        return [ref for leaf in self.leaves for ref in leaf.doc_refs()]

    def lm_tasks(self) -> dict[str, Any]:
        """Every subtask's lm-eval Task, by name."""
        return {leaf.name: leaf.task for leaf in self.leaves}


def leaf_tasks(name: str, include_path: str | None = None) -> list[str]:
    """The tasks an lm-eval group or tag expands to, depth first in its listed order; [name] for a task."""
    entry = find_entry(name, include_path)
    if lmeval_api.kind(entry) == "tag":
        return [t for m in sorted(entry.tags) for t in leaf_tasks(m, include_path)]
    if lmeval_api.kind(entry) != "group":
        return [name]
    out = []
    for m in (entry.cfg or {}).get("task", []):
        if not isinstance(m, str):
            raise HarnessError(f"lm-eval group {name!r} defines a subtask inline; list its subtasks by name instead")
        out += leaf_tasks(m, include_path)
    return out
