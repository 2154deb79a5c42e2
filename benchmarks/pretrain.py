"""The recipe that pretrains the toy world's base model (once per world config, then cached).

A LlamaForCausalLM with a character tokenizer learns every task family with
response-only loss; on the target family its labels are bimodal (see
`benchmarks.world`), and with `pretrain.hint_frac` > 0 a share of its
sequences carry a teacher label as a hint in their context. The result is saved with `save_pretrained` (safetensors)
and later loaded with AutoModelForCausalLM / AutoTokenizer like a hub model.
"""
from __future__ import annotations

import math
import random
import shutil
import string
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.tasks import ANSWER_DELIMITER, FAMILIES, STEP_SEPARATOR, draw_payloads, favours_correct_mode
from harness.modeling import build_char_tokenizer

# The teacher's delimiters are in the vocabulary but never in pretraining text: that is what makes
# the `worked`/`mild` labels off-policy for the base.
VOCAB_CHARS = string.digits + string.ascii_lowercase + ":=" + ANSWER_DELIMITER + STEP_SEPARATOR
POOL_PER_TASK = 4000
# The hinted context of `pretrain.hint_frac`: the form Hinted Decoding shows by default (`idft.hint_template`).
HINT_TEMPLATE = "{label}:{prompt}"


def ensure_base(world, path: Path, progress: bool = True, rebuild: bool = False) -> Path:
    """Return the cached base folder: the project's shipped base when one matches the world's key, else pretrained
    here first (safe across processes). `rebuild` discards the cached copy and pretrains on this machine."""
    from benchmarks import shipped_bases

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if rebuild:
            shutil.rmtree(path, ignore_errors=True)
        if (path / "model.safetensors").exists():
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shipped = None if rebuild else shipped_bases.shipped_base(world.cfg.base_key())
        problem = shipped_bases.verify(shipped) if shipped else None
        if shipped and not problem:
            shipped_bases.install(shipped, tmp)
        else:
            if problem:
                print(f"warning: not using the shipped base ({problem}); pretraining one here", file=sys.stderr)
            model, tok, seconds = pretrain_base(world, progress=progress)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "pretrain_seconds.txt").write_text(f"{seconds:.1f}\n")
        tmp.rename(path)
    return path


def pretraining_pairs(world, rng: random.Random) -> dict[str, list[tuple[str, str, bool]]]:
    """Per task: (prompt, correct answer, whether the correct mode is favoured) for the train pool."""
    pools = {}
    for name in world.cfg.tasks:
        fam = FAMILIES[name]
        payloads = draw_payloads(name, "train", POOL_PER_TASK, world.cfg.seed)
        pools[name] = [(fam.prompt(p), p, favours_correct_mode(p)) for p in payloads]
    return pools


def _response(world, task: str, payload: str, favoured: bool, rng: random.Random) -> str:
    fam = FAMILIES[task]
    if task != world.target:
        return fam.answer(payload)
    pc = world.cfg.pretrain.p_correct_favoured if favoured else world.cfg.pretrain.p_correct_other
    return fam.answer(payload) if rng.random() < pc else fam.distractor(payload)


def pretraining_texts(world, pools: dict[str, list[tuple[str, str, bool]]], rng: random.Random,
                      hint_rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """Endless (task, context, response) texts in the order pretraining trains them; only the response is trained.

    With `pretrain.hint_frac` > 0 that share of the target task's sequences is hinted: context
    HINT_TEMPLATE(teacher label, prompt), response the correct answer. `hint_rng` alone decides which, after `rng`
    drew the sequence as usual, so `rng`'s stream (tasks, payloads, modes) is the default world's at any hint_frac.
    """
    tasks, frac, style = list(pools), world.cfg.pretrain.hint_frac, world.cfg.teacher_style
    while True:
        task = rng.choice(tasks)
        prompt, payload, favoured = rng.choice(pools[task])
        response = _response(world, task, payload, favoured, rng)
        if frac > 0 and task == world.target and hint_rng.random() < frac:
            fam = FAMILIES[task]
            yield task, HINT_TEMPLATE.format(label=fam.label(payload, style), prompt=prompt), fam.answer(payload)
        else:
            yield task, prompt, response


def encode_sequence(tok, context: str, response: str) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of context + response + EOS: the mask is 1 on the response and EOS only."""
    c_ids = tok.encode(context, add_special_tokens=False)
    r_ids = tok.encode(response, add_special_tokens=False)
    return c_ids + r_ids + [tok.eos_token_id], [0] * len(c_ids) + [1] * (len(r_ids) + 1)


def pretrain_base(world, progress: bool = True):
    """Build and pretrain the toy base; returns (model, tokenizer, seconds)."""
    cfg, shape = world.cfg.pretrain, world.cfg.model
    threads = torch.get_num_threads()
    # One thread always: float reductions then run in the same order on every machine, so a world's
    # config hash names one base, whatever the core count of the machine that built it.
    torch.set_num_threads(1)
    try:
        return _pretrain(world, cfg, shape, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(world, cfg, shape, progress: bool):
    torch.manual_seed(world.cfg.seed)
    rng = random.Random(f"pretrain:{world.cfg.seed}")
    tok = build_char_tokenizer(VOCAB_CHARS)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads, max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    hint_rng = random.Random(f"pretrain-hint:{world.cfg.seed}")
    texts = pretraining_texts(world, pretraining_pairs(world, rng), rng, hint_rng)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    start = time.perf_counter()
    # In a log (not a terminal) the bar is redrawn every 30 s, not ten times a second: minutes of progress, few bytes.
    bar = tqdm(range(cfg.steps), desc=f"pretraining {world.cfg.name} base", disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for _ in bar:
        pairs = [encode_sequence(tok, context, response) for _, context, response in islice(texts, cfg.batch_size)]
        seqs, masks = [s for s, _ in pairs], [m for _, m in pairs]
        T = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (T - len(s)) for s in seqs])
        labels = torch.tensor([[t if m else -100 for t, m in zip(s, mk)] + [-100] * (T - len(s))
                               for s, mk in zip(seqs, masks)])
        attn = (torch.arange(T)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn at the bar's own interval
    model.eval()
    return model, tok, time.perf_counter() - start
