"""What a world needs on disk, and `harness fetch`: stage it all on a machine with network.

A GPU machine often has no network. `harness fetch <preset>` runs where there is
network and fills the local caches: the base model at its revision (Hugging Face
hub cache), every lm-eval dataset not given as local files (datasets cache), and
nltk's `punkt_tab` for IFEval. `harness run --world <preset> --dry-run` then
lists each requirement with whether it is present, offline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

NLTK_TASKS = ("ifeval",)  # lm-eval tasks whose scoring reads nltk's punkt_tab


@dataclass
class Requirement:
    """One thing a world reads from disk: what it is, where, and whether it is there (None: known on loading)."""

    what: str
    where: str
    present: bool | None

    def line(self) -> str:
        """A printable row."""
        mark = {True: "ok     ", False: "MISSING", None: "on load"}[self.present]
        return f"  {mark}  {self.what}: {self.where}"


def _task_sources(cfg) -> list:
    return [cfg.target, *cfg.retention]


def nltk_punkt_present() -> bool:
    """Whether nltk can find the punkt_tab tokenizer data (IFEval's sentence counts)."""
    import nltk
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def requirements(cfg) -> list[Requirement]:
    """Everything a world config reads from disk, checked without network."""
    if cfg.kind != "real":
        from harness.world import build_world
        world = build_world(cfg)
        base = world.cache_dir / "base"
        return [Requirement("toy base model (pretrained on first use, ~1-2 min)", str(base), base.exists())]
    from harness import gguf
    from harness.modeling import local_model
    out = []
    if gguf.is_gguf(cfg.base_model):  # converted on first use (or by `harness fetch`), offline
        try:
            folder = gguf.converted_folder(cfg.base_model)
            out.append(Requirement("base model (GGUF, converted once on first use)", str(folder),
                                   True if (folder / "model.safetensors").exists() else None))
        except HarnessError as e:
            out.append(Requirement("base model", str(e), False))
    else:
        try:
            where, ok = local_model(cfg.base_model, cfg.revision), True
        except HarnessError:
            where, ok = f"{cfg.base_model}" + (f"@{cfg.revision}" if cfg.revision else ""), False
        out.append(Requirement("base model", where, ok))
    for src in _task_sources(cfg):
        if src.include_path:
            out.append(Requirement(f"{src.task} task folder", src.include_path, Path(src.include_path).is_dir()))
        if src.data_files:
            for split, f in src.data_files.items():
                out.append(Requirement(f"{src.task} {split} data", f, Path(f).expanduser().exists()))
        else:
            out.append(Requirement(f"{src.task} data", "lm-eval's hub dataset (datasets cache)", None))
    train_file = getattr(cfg.target, "train_file", None)
    if train_file:
        out.append(Requirement(f"{cfg.target.task} training docs", train_file, Path(train_file).expanduser().exists()))
    if any(s.task in NLTK_TASKS for s in _task_sources(cfg)):
        out.append(Requirement("nltk punkt_tab (IFEval)", os.environ.get("NLTK_DATA", "nltk's default paths"),
                               nltk_punkt_present()))
    return out


def fetch(cfg, progress: bool = True) -> list[Requirement]:
    """Download what a real world needs into the local caches (needs network); prints and returns the requirements
    after."""
    if cfg.kind != "real":
        return _report(requirements(cfg))
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise HarnessError("HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: `harness fetch` needs the network; unset "
                           "them on a machine that has it")
    from harness import gguf
    if gguf.is_gguf(cfg.base_model):
        gguf.ensure_converted(cfg.base_model, progress)
    elif not Path(cfg.base_model).expanduser().exists():
        from huggingface_hub import snapshot_download
        path = snapshot_download(cfg.base_model, revision=cfg.revision)
        if progress:
            print(f"model {cfg.base_model} -> {path}")
    from benchmarks.lmeval_tasks import load_task
    from harness.world import cache_root
    for src in _task_sources(cfg):
        if not src.data_files:  # building the task downloads its dataset into the datasets cache
            load_task(src, cache_root() / "lmeval-tasks" / "fetch").eval_docs()
            if progress:
                print(f"dataset of {src.task} cached")
    if any(s.task in NLTK_TASKS for s in _task_sources(cfg)) and not nltk_punkt_present():
        import nltk
        target = os.environ.get("NLTK_DATA")
        if not nltk.download("punkt_tab", download_dir=target, quiet=not progress):
            raise HarnessError("nltk could not download punkt_tab; check the network, or copy it into $NLTK_DATA")
    return _report(requirements(cfg))


def _report(reqs: list[Requirement]) -> list[Requirement]:
    for r in reqs:
        print(r.line())
    return reqs


def dry_run(cfg) -> int:
    """Print the resolved plan and what it needs on disk; load the world offline. 0 if it can run, else 2."""
    from harness.modeling import check_device
    from harness.world import build_world

    print(f"world  {cfg.world.summary()}")
    print(f"method {cfg.method}: {cfg.train.max_steps} steps of {cfg.train.batch_size} sequences, lr {cfg.train.lr:g}, "
          f"precision {cfg.train.precision}, device {cfg.train.device}, eval every {cfg.train.eval_every} steps")
    if cfg.world.kind == "real" and cfg.world.source:
        print(f"source {cfg.world.source}")
    reqs = requirements(cfg.world)
    try:
        check_device(cfg.train.device)
        reqs.append(Requirement(f"device {cfg.train.device}", "torch sees it", True))
    except HarnessError as e:
        reqs.append(Requirement(f"device {cfg.train.device}", str(e).split(";")[0], False))
    print("needs:")
    for r in reqs:
        print(r.line())
    if any(r.present is False for r in reqs):
        print("not ready: fix what is MISSING above (`harness fetch` stages models and data on a machine with network)")
        return 2
    world = build_world(cfg.world)  # loads the lm-eval tasks and draws the splits, offline
    sizes = {sp: {t: len(v) for t, v in world.eval_splits()[sp].items()} for sp in ("val", "eval")}
    print(f"ready: {len(world.train_items)} training items, {len(world.heldout_items)} held-out, "
          f"validation {sizes['val']}, eval {sizes['eval']}")
    return 0
