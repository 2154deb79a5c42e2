"""Model and tokenizer loading for any causal LM (local path or hub id), and the char tokenizer."""
from __future__ import annotations

import os
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


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _is_hub_id(name)


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_model(name_or_path: str, *, trust_remote_code: bool = False, dtype: str = "float32",
               device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a hub id, like any hub model.

    Raises HarnessError for a missing local path, an unknown `dtype` (a key of
    DTYPES), or a tokenizer that has no pad token (batched generation and
    lm-eval would otherwise invent one).
    """
    if dtype not in DTYPES:
        raise HarnessError(f"unknown load dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = Path(name_or_path).expanduser()
    if not path.exists() and (_looks_like_path(name_or_path) or not _is_hub_id(name_or_path)):
        raise HarnessError(f"model path {name_or_path!r} does not exist; pass an existing folder "
                           f"written by save_pretrained, or a hub id like 'Qwen/Qwen2.5-0.5B'")
    src = str(path) if path.exists() else name_or_path
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load drown the harness's own progress
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        raise HarnessError(f"the tokenizer of {name_or_path!r} has no pad token; set one "
                           f"(e.g. tokenizer.pad_token = tokenizer.eos_token) and save it again")
    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype], use_safetensors=True)
    return model.to(device), tok
