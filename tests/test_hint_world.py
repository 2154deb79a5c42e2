"""`pretrain.hint_frac`: hinted pretraining sequences (hint in the context only, the correct own-format answer as
the trained response), the default stream unchanged at 0, and the cached bases' keys unchanged."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from benchmarks.pretrain import (HINT_TEMPLATE, VOCAB_CHARS, encode_sequence, pretraining_pairs,
                                 pretraining_texts)
from benchmarks.tasks import FAMILIES
from benchmarks.world import ToyWorld, WorldConfig
from harness.config import world_presets
from harness.modeling import build_char_tokenizer


def _micro(**pretrain) -> ToyWorld:
    preset = world_presets("toy")["micro"]["world"]
    return ToyWorld(WorldConfig(name="micro", **{**preset, "pretrain": {**preset["pretrain"], **pretrain}}))


def _stream(world: ToyWorld, n: int) -> list[tuple[str, str, str]]:
    seed = world.cfg.seed
    rng = random.Random(f"pretrain:{seed}")
    texts = pretraining_texts(world, pretraining_pairs(world, rng), rng, random.Random(f"pretrain-hint:{seed}"))
    return [next(texts) for _ in range(n)]


def _old_stream(world: ToyWorld, n: int) -> list[tuple[str, str, str]]:
    """The pretraining loop's draws before hint_frac existed (git d4a599c, benchmarks/pretrain.py::_pretrain)."""
    rng = random.Random(f"pretrain:{world.cfg.seed}")
    pools = pretraining_pairs(world, rng)
    tasks, pc = list(pools), world.cfg.pretrain
    out = []
    for _ in range(n):
        task = rng.choice(tasks)
        prompt, payload, favoured = rng.choice(pools[task])
        fam = FAMILIES[task]
        if task != world.target:
            response = fam.answer(payload)
        else:
            p = pc.p_correct_favoured if favoured else pc.p_correct_other
            response = fam.answer(payload) if rng.random() < p else fam.distractor(payload)
        out.append((task, prompt, response))
    return out


def _old_key(cfg: WorldConfig, **dump) -> str:
    """The keys as computed before hint_frac existed: the same dump without the field."""
    data = cfg.model_dump(**dump)
    data.get("pretrain", {}).pop("hint_frac", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize("cfg", [WorldConfig(), WorldConfig(target="add", seed=2),
                                 WorldConfig(name="micro", **world_presets("toy")["micro"]["world"])],
                         ids=["toy", "toy-add-seed2", "micro"])
def test_default_world_keys_unchanged(cfg):
    assert cfg.pretrain.hint_frac == 0.0
    assert cfg.base_key() == _old_key(cfg, include={"tasks", "target", "seed", "model", "pretrain", "base_model"})
    assert cfg.data_key() == _old_key(cfg, exclude={"name", "kind"})


def test_cached_toy_keys():
    # The default toy base's cache folder (~/.cache/forgetting-harness/worlds/toy-a0d16dd3e844) and base scores:
    # a change here means every base is pretrained again.
    cfg = WorldConfig()
    assert (cfg.base_key(), cfg.data_key()) == ("a0d16dd3e844", "a3be3ad97199")


def test_hinted_keys():
    base, hinted = WorldConfig(), WorldConfig(pretrain={"hint_frac": 0.1})
    assert hinted.base_key() != base.base_key() and hinted.data_key() != base.data_key()
    assert WorldConfig(pretrain={"hint_frac": 0.2}).base_key() != hinted.base_key()
    # The hints are teacher labels: the hinted base depends on the teacher's style, the default one does not.
    assert WorldConfig(teacher_style="mild").base_key() == base.base_key()
    mild = WorldConfig(teacher_style="mild", pretrain={"hint_frac": 0.1})
    assert mild.base_key() != hinted.base_key()


@pytest.mark.parametrize("world", [_micro(), ToyWorld(WorldConfig())], ids=["micro", "toy"])
def test_hint_frac_zero_is_the_old_stream(world):
    new, old = _stream(world, 3000), _old_stream(world, 3000)
    assert new == old
    tok = build_char_tokenizer(VOCAB_CHARS)
    for _, prompt, response in new[:200]:  # the old loop's token ids and mask
        p_ids = tok.encode(prompt, add_special_tokens=False)
        r_ids = tok.encode(response, add_special_tokens=False)
        assert encode_sequence(tok, prompt, response) == (p_ids + r_ids + [tok.eos_token_id],
                                                          [0] * len(p_ids) + [1] * (len(r_ids) + 1))


@pytest.mark.parametrize("style", ["worked", "mild"])
def test_hinted_stream(style):
    world = _micro(hint_frac=0.3)
    world.cfg.teacher_style = style
    n = 4000
    new, old = _stream(world, n), _old_stream(_micro(), n)
    fam = FAMILIES["sort"]
    hinted = 0
    for (task, ctx, resp), (task0, prompt0, resp0) in zip(new, old):
        assert task == task0                               # the same draws, one for one
        if ctx == prompt0:
            assert resp == resp0
            continue
        hinted += 1
        assert task == "sort"                              # only the target is hinted
        payload = prompt0[len("sort:"):-1]
        assert ctx == f"{fam.label(payload, style)}:{prompt0}"
        assert resp == fam.answer(payload)                 # the correct mode, own format, whatever resp0 was
    n_target = sum(t == "sort" for t, _, _ in old)
    assert 0.25 < hinted / n_target < 0.35


def test_hinted_masks_by_hand():
    tok = build_char_tokenizer(VOCAB_CHARS)
    ctx = HINT_TEMPLATE.format(label=FAMILIES["sort"].label("83512", "worked"), prompt=FAMILIES["sort"].prompt("83512"))
    assert ctx == "1,2,3,5,8|12358:sort:83512="
    ids, mask = encode_sequence(tok, ctx, "12358")
    assert len(ids) == 27 + 5 + 1 and mask == [0] * 27 + [1] * 6
    assert tok.decode(ids[:27]) == ctx and tok.unk_token_id not in ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[27:32]) == "12358"
    # A handful from the stream: the hint and the prompt are never trained; the trained part is answer + EOS,
    # in which the teacher's separators never occur.
    world = _micro(hint_frac=0.5)
    seen = 0
    for task, ctx, resp in _stream(world, 400):
        if ctx.count(":") < 2:
            continue
        seen += 1
        ids, mask = encode_sequence(tok, ctx, resp)
        trained = [t for t, m in zip(ids, mask) if m]
        assert mask == sorted(mask)                        # zeros (the context), then ones (the response)
        assert tok.decode(trained[:-1]) == resp == FAMILIES[task].answer(ctx.rsplit(":", 1)[1][:-1])
        assert trained[-1] == tok.eos_token_id
        assert "|" not in resp and "," not in resp and "|" in ctx
        assert tok.decode([t for t, m in zip(ids, mask) if not m]) == ctx
    assert seen >= 5


def test_hint_template_is_hd_default():
    from methods.idft import IDFTConfig
    assert HINT_TEMPLATE == IDFTConfig().hint_template
