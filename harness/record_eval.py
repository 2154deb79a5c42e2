"""The evaluation of record: a saved checkpoint scored by lm-eval in a fresh process, with an lm-eval backend.

The in-run `Evaluator` wraps the live model in `LiveLM`; the number a paper reports comes from lm-eval's own
backends instead: `vllm` on GPU machines (it builds its own engine, so it runs in a fresh process: two engines in
one process fight over memory) and `hf` (HFLM) elsewhere. `record_eval` writes a small JSON spec and runs

    python -m harness.record_eval SPEC.json

which calls `lm_eval.simple_evaluate` with the world's own lm-eval tasks, loaded from the override YAMLs the
world wrote (`TaskManager(include_path=<their folders>, include_defaults=False)`, the same loader that built the
in-run tasks), the same doc ids (`samples=`, val and eval splits together), filter, metric, chat template and
system prompt, and `fewshot_as_multiturn=False` (what the in-run `evaluate()` call uses). The `lm_eval run` CLI
is not used: it indexes every built-in task (~10 s), passes model_args as task metadata, turns
`fewshot_as_multiturn` on with the chat template, and writes its samples to dated files; the entry point writes
one JSON with each logged sample's doc id, filter, metric and response, which is read exactly like the in-run
Evaluator reads lm-eval's samples.

A world's task must be rebuildable from a name or a YAML in another process: inline Python-dict tasks (the toy
world) are not, so the evaluation of record is for real worlds only.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import metric_names as N
from harness.errors import HarnessError
from harness.evaluation import requested_docs

BACKENDS = ("hf", "vllm")
SPEC_NAME, SAMPLES_NAME, LOG_NAME = "record_spec.json", "record_samples.json", "record_eval.log"
# What vLLM is given unless extra_model_args says otherwise (max_model_len is sized from the world's prompts;
# gpu_memory_utilization from the memory free on the GPU when the child starts, `vllm_memory_fraction`).
VLLM_DEFAULTS: dict[str, Any] = {"dtype": "auto", "gpu_memory_utilization": 0.8}
VLLM_MIN_FRACTION = 0.05  # below this share of the GPU an engine holds hardly any KV cache: refuse instead
CHILD_CONTEXT_BYTES = 2 << 30  # what the child's own CUDA context and vLLM's start-up take before it measures
DEFAULT_TIMEOUT_S = 3 * 3600
# A launcher's variables (torchrun, torchelastic): inherited, lm-eval's HF backend (accelerate) would build a
# multi-GPU state, join a process group of ranks that do not exist and evaluate 1/N of the docs, or hang.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "TORCH_NCCL_ASYNC_ERROR_HANDLING")
RANK_PREFIXES = ("TORCHELASTIC_", "PET_")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _task_sources(specs: list) -> tuple[list[str], list[str], bool]:
    """(lm-eval task names, include folders, whether lm-eval's own tasks are needed) of a world's EvalTasks."""
    names: list[str] = []
    folders: list[str] = []
    defaults = False
    for spec in specs:
        for name, task in spec.lm_tasks.items():
            if isinstance(task, str):  # an installed lm-eval task, by name
                defaults = True
                names.append(task)
                continue
            source = None
            if not isinstance(task, dict):  # a built Task: the YAML it came from
                meta = getattr(getattr(task, "config", None), "metadata", None) or {}
                source = meta.get("config_source") if isinstance(meta, dict) else None
            if not source or not Path(source).is_file():
                raise HarnessError(f"task {spec.task!r} is an inline lm-eval task that another process cannot "
                                   f"rebuild; the evaluation of record is for real worlds (toy runs are scored "
                                   f"in-run only)")
            names.append(name)
            folder = str(Path(source).parent)
            if folder not in folders:
                folders.append(folder)
    return names, folders, defaults


def _tokenizer_path(world, checkpoint: Path) -> str:
    """The checkpoint's own tokenizer when it saved one, else the base's (run checkpoints save the model only)."""
    if any((checkpoint / f).is_file() for f in _TOKENIZER_FILES):
        return str(checkpoint)
    return str(world.base_path(progress=False))


def _max_model_len(world, checkpoint: Path, specs: list) -> int:
    """A context length that holds every prompt plus the largest generation budget (rounded up), within the model's."""
    budget = 32  # multiple-choice continuations: a few tokens
    for spec in specs:
        for task in spec.lm_tasks.values():
            cfg = getattr(task, "config", None)
            if getattr(cfg, "output_type", None) == "generate_until":
                budget = max(budget, int((cfg.generation_kwargs or {}).get("max_gen_toks") or 256))
    tok = getattr(world, "tokenizer", None)
    prompts = [it.prompt for split in world.eval_splits().values() for items in split.values() for it in items]
    longest = max((len(tok.encode(p, add_special_tokens=False)) for p in prompts), default=0) if tok else 2048
    need = 256 * math.ceil((longest + budget + 16) / 256)
    try:
        cap = json.loads((checkpoint / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        cap = None
    return min(need, int(cap)) if cap else need


def vllm_memory_fraction(requested: float | None = None) -> float | None:
    """The gpu_memory_utilization a fresh vLLM engine can start with beside this process; None without CUDA.

    vLLM 0.33 refuses to start when the free memory is below `gpu_memory_utilization` x the GPU's total, and the
    parent still holds the policy, optimizer state, base and maybe its own engine: the share is what is free now
    (after giving back torch's cached blocks), less the child's own start-up. `requested` (record_model_args) is
    checked against the same bound."""
    import torch
    if not torch.cuda.is_available():
        return requested
    torch.cuda.empty_cache()  # blocks this process cached but does not use count as taken for vLLM
    free, total = torch.cuda.mem_get_info()
    fits = math.floor(100 * (free - CHILD_CONTEXT_BYTES) / total) / 100
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    if requested is not None and requested > fits:
        raise HarnessError(f"eval.record_model_args asks vLLM for gpu_memory_utilization={requested} "
                           f"({gib(requested * total)}) but {gib(free)} of {gib(total)} is free beside the run; "
                           f"lower it to {max(fits, 0):.2f} or leave it out (sized from the free memory)")
    if fits < VLLM_MIN_FRACTION:
        raise HarnessError(f"only {gib(free)} of {gib(total)} is free beside the run: too little for the evaluation "
                           f"of record's vLLM engine; use eval.record_backend=hf, train.vllm_sleep=true, or a "
                           f"smaller train.vllm_gpu_memory_utilization")
    return requested if requested is not None else fits


def build_spec(world, checkpoint: Path, backend: str = "hf", out_dir: Path | None = None, device: str = "cpu",
               batch_size: int | str | None = None, extra_model_args: dict | None = None,
               splits: tuple[str, ...] = ("val", "eval")) -> dict[str, Any]:
    """The subprocess's instructions: lm-eval model and model_args, tasks, include folders, doc ids, chat options."""
    if backend not in BACKENDS:
        raise HarnessError(f"unknown evaluation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    specs = world.eval_tasks()
    names, folders, defaults = _task_sources(specs)
    checkpoint = Path(checkpoint).expanduser().resolve()
    if not (checkpoint / "config.json").is_file():
        raise HarnessError(f"checkpoint {str(checkpoint)!r} has no config.json; pass a folder written by "
                           f"save_pretrained")
    options = dict(world.eval_options())
    # add_bos_token=False: lm-eval's backends otherwise encode with the tokenizer's default special tokens (a Llama
    # tokenizer prepends <|begin_of_text|> to a prompt without a chat template); the harness tokenizes every prompt
    # as the exact text, add_special_tokens=False (LiveLM, training, sampling), and a chat template writes its own.
    model_args: dict[str, Any] = {"pretrained": str(checkpoint), "tokenizer": _tokenizer_path(world, checkpoint),
                                  "add_bos_token": False}
    if world.load_kwargs().get("trust_remote_code"):
        model_args["trust_remote_code"] = True
    if backend == "hf":
        model_args["dtype"] = "float32"  # the in-run evaluation's load dtype (harness.modeling.load_model)
        batch_size = 16 if batch_size is None else batch_size
    else:
        model_args |= VLLM_DEFAULTS
        fraction = vllm_memory_fraction((extra_model_args or {}).get("gpu_memory_utilization"))
        if fraction is not None:
            model_args["gpu_memory_utilization"] = fraction
        if not (extra_model_args or {}).keys() & {"max_model_len", "max_length"}:
            model_args["max_model_len"] = _max_model_len(world, checkpoint, specs)
        batch_size = "auto" if batch_size is None else batch_size
        device = None  # vLLM ignores it (select GPUs with CUDA_VISIBLE_DEVICES)
    model_args |= extra_model_args or {}
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else checkpoint / "record_eval"
    return {
        "model": backend, "model_args": model_args, "device": device, "batch_size": batch_size,
        "tasks": names, "include_path": folders, "include_defaults": defaults,
        "samples": requested_docs(specs, splits),
        "apply_chat_template": options.pop("apply_chat_template", False),
        "system_instruction": options.pop("system_instruction", None),
        "fewshot_as_multiturn": options.pop("fewshot_as_multiturn", False),
        "output": str(out / SAMPLES_NAME),
    }


def command(spec_path: Path) -> list[str]:
    """The subprocess's command line."""
    return [sys.executable, "-m", "harness.record_eval", str(spec_path)]


def _env() -> dict[str, str]:
    """The child's environment: offline, on the repository, one process (a launcher's rank variables removed)."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES and not k.startswith(RANK_PREFIXES)}
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _tail(log: Path, n: int = 3, width: int = 400) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    text = " | ".join(lines[-n:]) or "(empty log)"
    return text if len(text) <= width else "..." + text[-width:]


def record_eval(world, checkpoint: Path, backend: str = "hf", out_dir: Path | None = None, device: str = "cpu",
                batch_size: int | str | None = None, extra_model_args: dict | None = None,
                timeout_s: int = DEFAULT_TIMEOUT_S, splits: tuple[str, ...] = ("val", "eval")):
    """Score a saved checkpoint with lm-eval (backend `hf` or `vllm`) in a subprocess, on the world's splits.

    Returns a `harness.evaluation.EvalResult`: per split and task, 0/1 correctness in the world's item order and
    the responses, read like the in-run Evaluator reads them. Raises a one-line HarnessError when the world's
    tasks cannot be rebuilt in another process (toy world), too little GPU memory is free for a vLLM engine, or the
    subprocess fails or runs past `timeout_s`.
    """
    from harness.evaluation import EvalResult, Evaluator, read_split

    spec = build_spec(world, checkpoint, backend, out_dir, device, batch_size, extra_model_args, splits)
    out = Path(spec["output"]).parent
    out.mkdir(parents=True, exist_ok=True)
    spec_path, log = out / SPEC_NAME, out / LOG_NAME
    spec_path.write_text(json.dumps(spec, indent=1))
    Path(spec["output"]).unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command(spec_path), stdout=fh, stderr=subprocess.STDOUT, env=_env(),
                                cwd=str(out), start_new_session=True)  # its own group: vLLM's workers die with it
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise HarnessError(f"evaluation of record timed out after {timeout_s} s ({backend}); raise timeout_s "
                               f"or lower the split sizes; log: {log}") from None
    seconds = time.perf_counter() - start
    if rc != 0 or not Path(spec["output"]).is_file():
        raise HarnessError(f"evaluation of record failed ({backend}, exit {rc}): {_tail(log)}; log: {log}")
    logged = json.loads(Path(spec["output"]).read_text())["samples"]

    all_splits = world.eval_splits()
    result = {}
    for split in splits:
        correct, responses = {}, {}
        for spec_t in world.eval_tasks():
            try:
                correct[spec_t.task], responses[spec_t.task] = read_split(spec_t, split, logged)
            except RuntimeError as e:
                raise HarnessError(f"the evaluation of record: {e}; log: {log}") from None
        result[split] = Evaluator._scores(correct, responses)
    return EvalResult(result, seconds)


def record_metrics(res, in_run: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """The evaluation of record's accuracies (`record/acc/<task>`, `record/val/acc/<task>`) and the fraction of
    examples on which it agrees with the in-run evaluation of the same checkpoint (`record/agreement`)."""
    out, same, total = {}, 0, 0
    for sp, scores in res.splits.items():
        prefix = N.RECORD if sp == "eval" else f"{N.RECORD}{sp}/"
        for t, acc in scores.acc.items():
            out[prefix + N.acc(t)] = acc
            if t in in_run.get(sp, {}):
                same += int((scores.correct[t] == in_run[sp][t]).sum())
                total += len(scores.correct[t])
    if total:
        out[N.RECORD_AGREEMENT] = same / total
    return out


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry: run lm-eval as SPEC.json says; write each logged sample's doc id, filter, metrics, response."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.record_eval SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    tm = TaskManager(include_path=spec["include_path"] or None, include_defaults=spec["include_defaults"])
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=spec["model"], model_args=spec["model_args"], tasks=spec["tasks"], task_manager=tm,
        batch_size=spec["batch_size"], device=spec["device"], samples=spec["samples"] or None,
        apply_chat_template=spec["apply_chat_template"], system_instruction=spec["system_instruction"],
        fewshot_as_multiturn=spec["fewshot_as_multiturn"], bootstrap_iters=0, log_samples=True)
    seconds = time.perf_counter() - start
    if res is None:  # not rank 0
        return 0
    drop = {"doc", "arguments", "resps", "target", "doc_hash", "prompt_hash", "target_hash"}
    samples = {name: [{k: v for k, v in s.items() if k not in drop} for s in rows]
               for name, rows in res["samples"].items()}
    out = {"samples": samples, "results": res.get("results", {}), "seconds": seconds,
           "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
           "model_args": spec["model_args"]}
    tmp = Path(spec["output"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, default=handle_non_serializable))
    tmp.replace(spec["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
