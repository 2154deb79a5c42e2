"""What a world needs on disk, and `harness fetch`: stage it all on a machine with network.

A GPU machine often has no network. `harness fetch <preset>` runs where there is
network and fills the local caches: the base model at its revision (Hugging Face
hub cache), every lm-eval dataset not given as local files (datasets cache), and
nltk's `punkt_tab` for IFEval. `harness run --world <preset> --dry-run` then
lists each requirement with whether it is present, offline.
"""
from __future__ import annotations

import os
from pathlib import Path

from benchmarks.lmeval_checks import first_line
from harness import lmeval_api
from harness.errors import HarnessError
from harness.world import Requirement, world_class

NLTK_TASKS = ("ifeval",)  # lm-eval tasks whose scoring reads nltk's punkt_tab


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
    """Everything a world config reads from disk, checked without network, as its kind's World says."""
    return world_class(cfg.kind).requirements(cfg)


def real_requirements(cfg) -> list[Requirement]:
    """What a real world reads: the base model and tokenizer, task folders, data files or hub datasets, nltk data."""
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
        if ok:
            out.append(_tokenizer_requirement(cfg, where))
    for src in _task_sources(cfg):
        if src.include_path:
            out.append(Requirement(f"{src.task} task folder", src.include_path, Path(src.include_path).is_dir()))
        if src.data_files:
            for split, f in src.data_files.items():
                out.append(Requirement(f"{src.task} {split} data", f, Path(f).expanduser().exists()))
        else:
            out += [Requirement(f"{src.task} data", f"hub dataset {ds} (datasets cache)", hub_dataset_cached(ds))
                    for ds in hub_datasets(src)]
    train_file = getattr(cfg.target, "train_file", None)
    if train_file:
        out.append(Requirement(f"{cfg.target.task} training docs", train_file, Path(train_file).expanduser().exists()))
    if any(s.task in NLTK_TASKS for s in _task_sources(cfg)):
        out.append(Requirement("nltk punkt_tab (IFEval)", os.environ.get("NLTK_DATA", "nltk's default paths"),
                               nltk_punkt_present()))
    return out


def _tokenizer_requirement(cfg, folder: str) -> Requirement:
    """The base model's tokenizer loaded (with its chat template when the world renders prompts with one)."""
    from harness.modeling import load_tokenizer
    what = "tokenizer" + (" and chat template" if cfg.chat_template else "")
    try:
        load_tokenizer(folder, chat_template=cfg.chat_template, trust_remote_code=cfg.trust_remote_code,
                       system_prompt=cfg.system_prompt)
    except HarnessError as e:
        return Requirement(what, folder, False, problem=str(e))
    return Requirement(what, folder, True)


def hub_datasets(src) -> list[str]:
    """The hub dataset repositories (`org/name`) an lm-eval task, or every task of a group, reads."""
    from benchmarks.lmeval_lookup import _full_index, find_entry
    entries = [find_entry(src.task, src.include_path)]
    if lmeval_api.kind(entries[0]) in ("group", "tag"):  # one index for the tree: a text scan per leaf takes minutes
        index = dict(_full_index()) | (lmeval_api.index_folders([Path(src.include_path).expanduser()])
                                        if src.include_path else {})
        entries = _leaf_entries(entries[0], index)
    repos = set()
    for e in entries:
        cfg = lmeval_api.load_yaml(e.yaml_path) if e.yaml_path else {}
        if cfg.get("dataset_path"):
            repos.add(str(cfg["dataset_path"]))
    return sorted(repos)


def _leaf_entries(entry, index: dict) -> list:
    if lmeval_api.kind(entry) == "tag":
        return [x for m in sorted(entry.tags) if m in index for x in _leaf_entries(index[m], index)]
    if lmeval_api.kind(entry) != "group":
        return [entry]
    members = [m for m in (entry.cfg or {}).get("task", []) if isinstance(m, str) and m in index]
    return [x for m in members for x in _leaf_entries(index[m], index)]


def hub_dataset_cached(dataset: str) -> bool:
    """Whether a hub dataset repository (`org/name`) is in the local hub or datasets cache (what an offline run reads)."""
    import datasets.config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / ("datasets--" + dataset.replace("/", "--"))
    built = Path(datasets.config.HF_DATASETS_CACHE) / dataset.replace("/", "___")
    return hub.is_dir() or built.is_dir()


def fetch(cfg, progress: bool = True, rebuild_base: bool = False) -> list[Requirement]:
    """Stage what a world needs into the local caches, as its kind's World does it (a real world's downloads need
    the network; a toy world's base is shipped or pretrained); prints and returns the requirements after."""
    world_class(cfg.kind).stage(cfg, progress=progress, rebuild_base=rebuild_base)
    return _report(requirements(cfg))


def real_fetch(cfg, progress: bool = True, rebuild_base: bool = False) -> None:
    """A real world's downloads: the base model at its revision, lm-eval datasets not given as files, nltk data."""
    if rebuild_base:
        raise HarnessError("--rebuild-base is for toy worlds, whose base the harness pretrains; a real world's base "
                           "is its model folder or hub id")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    from harness import gguf
    if gguf.is_gguf(cfg.base_model):  # a GGUF file a package ships: converted here, offline
        gguf.ensure_converted(cfg.base_model, progress)
    elif not Path(cfg.base_model).expanduser().exists():
        if offline:
            raise HarnessError("HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: `harness fetch` needs the network; unset "
                               "them on a machine that has it")
        path = _download_model(cfg.base_model, cfg.revision)
        if progress:
            print(f"model {cfg.base_model} -> {path}")
    from benchmarks.lmeval_tasks import load_task
    from harness.world import cache_root
    for src in _task_sources(cfg):
        if not src.data_files:  # building the task downloads its dataset into the datasets cache
            try:
                load_task(src, cache_root() / "lmeval-tasks" / "fetch").eval_docs()
            except HarnessError:
                raise
            except Exception as e:  # datasets/fsspec/httpx errors from deep inside lm-eval's dataset download
                raise HarnessError(f"could not download the dataset of lm-eval task {src.task!r} "
                                   f"({type(e).__name__}: {first_line(e)}); check the network, or give "
                                   f"data_files with local copies") from None
            if progress:
                print(f"dataset of {src.task} cached")
    if any(s.task in NLTK_TASKS for s in _task_sources(cfg)) and not nltk_punkt_present():
        import nltk
        target = os.environ.get("NLTK_DATA")
        if not nltk.download("punkt_tab", download_dir=target, quiet=not progress):
            raise HarnessError("nltk could not download punkt_tab; check the network, or copy it into $NLTK_DATA")


def _download_model(name: str, revision: str | None) -> str:
    """snapshot_download with huggingface_hub's errors said in one line, naming world.base_model/world.revision."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    try:
        return snapshot_download(name, revision=revision)
    except GatedRepoError:
        raise HarnessError(f"model {name!r} is gated on the hub; accept its licence on its page and log in "
                           f"(`hf auth login`), or set world.base_model to a local folder") from None
    except RevisionNotFoundError:
        raise HarnessError(f"world.revision {revision!r} is not a revision of {name!r}; give a commit or tag "
                           "the hub lists") from None
    except RepositoryNotFoundError:
        raise HarnessError(f"world.base_model {name!r} is not a model on the hub (or is private); check the id, "
                           "or log in with `hf auth login`") from None
    except Exception as e:  # LocalEntryNotFoundError (no network), HTTP and OS errors: one line, not a traceback
        raise HarnessError(f"could not download model {name!r} ({type(e).__name__}: {first_line(e)}); "
                           "`harness fetch` needs the network: run it on a machine that has it") from None


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
    if getattr(cfg.world, "source", ""):
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
    missing = [r for r in reqs if r.present is False]
    if missing:
        more = f" and {len(missing) - 1} more MISSING above" if len(missing) > 1 else ""
        first = missing[0]
        if first.problem:
            raise HarnessError(f"not ready{more and ' (' + more.strip() + ')'}: {first.problem}")
        raise HarnessError(f"not ready: {first.what} is missing ({first.where}){more}; fix it "
                           "(`harness fetch` stages models and data on a machine with network)")
    world = build_world(cfg.world)  # loads the lm-eval tasks, renders each one's first docs, draws the splits
    world.check_method(cfg.method)
    world.dry_run_checks()
    sizes = {sp: {t: len(v) for t, v in world.eval_splits()[sp].items()} for sp in ("val", "eval")}
    print(f"ready: {len(world.train_items)} training items, {len(world.heldout_items)} held-out, "
          f"validation {sizes['val']}, eval {sizes['eval']}")
    if cfg.train.parallel == "fsdp":  # rank 0's evaluation memory vs the GPU present
        from harness.fsdp import dry_run_line
        print(dry_run_line(cfg.train, world.base_path(progress=False)))
    return 0
