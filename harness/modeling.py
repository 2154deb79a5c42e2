"""Model and tokenizer loading for any causal LM (local path or hub id), and the char tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness.errors import HarnessError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Load dtypes a run may ask for (TrainConfig.frozen_dtype); float16 is left out: bf16-trained models overflow it.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Files any saved tokenizer has at least one of; without them transformers 5 silently builds an empty tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


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


def load_tokenizer(path: str, *, chat_template: bool = False, trust_remote_code: bool = False,
                   setting: str = "world.base_model", system_prompt: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder; one-line HarnessError when it is missing, unreadable or empty,
    or when `chat_template` is asked of a tokenizer that has none or whose template fails on a probe chat."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise HarnessError(f"{setting} {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
                           f"save the tokenizer into it too (tokenizer.save_pretrained(folder))")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:  # unreadable or inconsistent tokenizer files
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise HarnessError(f"the tokenizer in {setting} {path!r} cannot be loaded ({type(e).__name__}: {msg}); "
                           f"save it again with tokenizer.save_pretrained") from None
    if len(tok) < 2:
        raise HarnessError(f"the tokenizer in {setting} {path!r} is empty ({len(tok)} token); save the model's "
                           f"real tokenizer into the folder")
    if chat_template and not getattr(tok, "chat_template", None):
        raise HarnessError(f"the tokenizer in {setting} {path!r} has no chat template but world.chat_template is "
                           f"true; set world.chat_template=false for plain prompts, or use a tokenizer with one")
    if chat_template:
        chat = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": "2 + 2?"}]
        try:
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja's TemplateError, or the template's own raise_exception("...")
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            hint = "drop world.system_prompt (the template may not take a system turn)" if system_prompt else \
                "fix the template or set world.chat_template=false"
            raise HarnessError(f"the chat template of {setting} {path!r} fails on a "
                               f"{'system + ' if system_prompt else ''}user chat ({type(e).__name__}: {msg}); "
                               f"{hint}") from None
    return tok


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
    tok = load_tokenizer(src, trust_remote_code=trust_remote_code, setting="model")
    if tok.pad_token_id is None:
        raise HarnessError(f"the tokenizer of {name_or_path!r} has no pad token; set one "
                           f"(e.g. tokenizer.pad_token = tokenizer.eos_token) and save it again")
    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype], use_safetensors=True)
    return model.to(device), tok
