"""Model and tokenizer loading for any causal LM (local path or hub id), and the char tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness.errors import HarnessError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Load dtypes a run may ask for (TrainConfig.frozen_dtype); float16 is left out: bf16-trained models overflow it.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_char_tokenizer(chars: str) -> PreTrainedTokenizerBase:
    """A real HF fast tokenizer with one token per character (specials first: pad=0, bos=1, eos=2, unk=3)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()  # without it decode() joins characters with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def check_device(device: str) -> None:
    """One-line HarnessError when `device` cannot run here (CUDA asked of a CPU build, or a GPU index not present)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HarnessError(f"train.device={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU found"
            raise HarnessError(f"train.device={device!r} but torch {torch.__version__} sees no CUDA GPU ({build}); run "
                               f"on a GPU machine (`make setup-gpu`) or set train.device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HarnessError(f"train.device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible "
                               f"(CUDA_VISIBLE_DEVICES); pick one of cuda:0..cuda:{torch.cuda.device_count() - 1}")


def local_model(name: str, revision: str | None = None) -> str:
    """A local folder for a model path, a cached hub id or a `gguf:` file (converted once into the harness cache);
    one-line HarnessError when it is not on disk."""
    from harness import gguf
    if gguf.is_gguf(name):
        return str(gguf.ensure_converted(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise HarnessError(f"model folder {name!r} does not exist; set world.base_model to a folder written by "
                           f"save_pretrained or to a hub id like Qwen/Qwen2.5-1.5B-Instruct")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and kin: the id at that revision was never fetched here
        at = f" at revision {revision}" if revision else ""
        raise HarnessError(f"model {name!r}{at} is not in the local Hugging Face cache; run `harness fetch "
                           f"<preset>` on a machine with network, or set world.base_model to a local folder") from None


def load_model(name_or_path: str, *, trust_remote_code: bool = False, dtype: str = "float32",
               device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a hub id, like any hub model.

    Raises HarnessError for a missing local path, an unknown `dtype` (a key of
    DTYPES), or a tokenizer that has no pad token (batched generation and
    lm-eval would otherwise invent one).
    """
    if dtype not in DTYPES:
        raise HarnessError(f"unknown load dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    src = local_model(name_or_path)  # never a download at run time: `harness fetch` stages hub models
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load drown the harness's own progress
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        raise HarnessError(f"the tokenizer of {name_or_path!r} has no pad token; set one "
                           f"(e.g. tokenizer.pad_token = tokenizer.eos_token) and save it again")
    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype], use_safetensors=True)
    return model.to(device), tok
