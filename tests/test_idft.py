"""IDFT: hand-computed token weights, the SFT/DFT limits, the λ schedule, the gradient, and Hinted Decoding."""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from methods._hinted import delimiter_ids, hinted_decode
from methods.idft import idft_token_loss, lambda_schedule
from method_harness import build, train

LN2 = math.log(2.0)


def _loss(p: list[float], H: list[float], lam=1.0, beta=1.0, gmin=0.1, gmax=2.0, **kw):
    logp = torch.log(torch.tensor([p]))                                        # [1, n]
    return idft_token_loss(logp, torch.tensor([H]), lam, beta, gmin, gmax, **kw)


def test_weights_by_hand():
    # p=0.5, H=ln2: φ = ln0.5 + ln2 = 0 → γ_raw = e^0 = 1 → weight 0.5^1 = 0.5; ℓ = −0.5·ln0.5 = 0.346574
    # p=e^-3, H=0: φ = −3 → γ_raw = e^3 = 20.09, clipped to 2 → weight (e^-3)^2 = e^-6 = 0.0024788; ℓ = 3e^-6 = 0.0074363
    # p=0.9, H=1: φ = ln0.9 + 1 = 0.894639 → γ = e^-0.894639 = 0.408755 → weight 0.9^0.408755 = 0.957848;
    #   ℓ = 0.957848 · 0.1053605 = 0.100919
    loss, stats = _loss([0.5, math.exp(-3), 0.9], [LN2, 0.0, 1.0])
    assert loss.tolist()[0] == pytest.approx([0.346574, 0.0074363, 0.100919], rel=1e-4)
    assert stats["weight"] == pytest.approx((0.5 + 0.0024788 + 0.957848) / 3, rel=1e-4)
    assert stats["gamma"] == pytest.approx((1 + 2 + 0.408755) / 3, rel=1e-4)
    assert stats["phi"] == pytest.approx((0 - 3 + 0.894639) / 3, abs=1e-5)
    # λ = 0.5 at the second token: γ = 1 + 0.5·(2 − 1) = 1.5 → weight e^-4.5 = 0.011109
    _, stats = _loss([math.exp(-3)], [0.0], lam=0.5)
    assert stats["weight"] == pytest.approx(0.011109, rel=1e-4)
    # the mask selects which tokens the statistics average over: only the first → weight 0.5
    _, stats = _loss([0.5, math.exp(-3)], [LN2, 0.0], mask=torch.tensor([[1.0, 0.0]]))
    assert stats["weight"] == pytest.approx(0.5)


def test_limits_sft_and_dft():
    p = [0.5, 0.1, 0.9]
    # γ_min = 0 and very positive φ (H = 30): γ = e^-(≈29) ≈ 0 → weight p^0 ≈ 1 → ℓ = −log p (SFT)
    loss, _ = _loss(p, [30.0] * 3, gmin=0.0)
    assert loss.tolist()[0] == pytest.approx([-math.log(x) for x in p], rel=1e-6)
    # λ = 0: γ = 1 whatever φ → weight p → ℓ = −p log p (DFT)
    loss, stats = _loss(p, [0.0, 5.0, 0.3], lam=0.0)
    assert loss.tolist()[0] == pytest.approx([-x * math.log(x) for x in p], rel=1e-6)
    assert stats["gamma"] == pytest.approx(1.0)


def test_lambda_schedule():
    # w = 0.2, τ = 0.1: 0 before 0.2, (s − 0.2)/0.1 on [0.2, 0.3), 1 from 0.3 on
    assert lambda_schedule(0.1, 0.2, 0.1) == 0.0
    assert lambda_schedule(0.25, 0.2, 0.1) == pytest.approx(0.5)
    assert lambda_schedule(0.3, 0.2, 0.1) == pytest.approx(1.0)   # boundary (0.2 + 0.1 rounds above 0.3)
    assert lambda_schedule(0.35, 0.2, 0.1) == 1.0
    assert lambda_schedule(0.9, 0.2, 0.1) == 1.0
    assert lambda_schedule(0.0, 0.0, 0.0) == 1.0   # the launched run: λ ≡ 1 from the first step


@pytest.mark.parametrize("detach", [True, False])
def test_gradient(detach):
    torch.manual_seed(0)
    z = torch.randn(1, 3, 5, requires_grad=True)                               # logits [B=1, T-1=3, V=5]
    y = torch.tensor([[1, 4, 0]])
    lp = torch.log_softmax(z, -1)
    logp = lp.gather(-1, y[..., None]).squeeze(-1)                             # [1, 3]
    ent = -(lp.exp() * lp).sum(-1)                                             # [1, 3], has a gradient too
    loss, stats = idft_token_loss(logp, ent, 1.0, 1.0, 0.1, 2.0, detach_weight=detach)
    loss.sum().backward()
    with torch.no_grad():
        probs = z.softmax(-1)
        p = probs.gather(-1, y[..., None]).squeeze(-1)
        gamma = torch.exp(-(p.log() + ent.detach())).clamp(0.1, 2.0)
        # ∇_z log p_y = onehot(y) − softmax(z); weight form: ∇ℓ = −p^γ ∇log p (γ, φ, H get no gradient);
        # the initial release's undetached form (e33b89c) differentiates p^γ too:
        # ∇ℓ = −p^γ (1 + γ log p) ∇log p.
        coef = p ** gamma if detach else p ** gamma * (1 + gamma * p.log())
        expected = -coef[..., None] * (torch.nn.functional.one_hot(y, 5) - probs)
    assert torch.allclose(z.grad, expected, atol=1e-6)


# ---------------------------------------------------------------- Hinted Decoding on the micro world

TEMPLATE = "{label}:{prompt}"


def _contexts(world, tok, n=32):
    items = world.train_items[:n]
    enc = lambda s: tok.encode(s, add_special_tokens=False)                    # noqa: E731
    return items, [enc(TEMPLATE.format(label=i.label, prompt=i.prompt)) for i in items], [enc(i.prompt) for i in items]


def _hd(model, tok, hinted, plain, **kw):
    args = dict(beta=0.0, temperature=0.0, top_p=0.95, max_new_tokens=24, eos_id=tok.eos_token_id,
                pad_id=tok.pad_token_id, switch_ids=delimiter_ids(tok, "|"))
    return hinted_decode(model, hinted, plain, **{**args, **kw})


def test_hd_streams_match_greedy(micro_world):
    from harness.sampler import HFSampler
    world, model, tok = micro_world
    _, hinted, plain = _contexts(world, tok)
    sampler = HFSampler(model, tok)
    # β = 0, greedy: the output is the hinted stream's greedy decoding (the micro base never emits '|')
    out, fin, fed = _hd(model, tok, hinted, plain)
    ref = sampler.generate(hinted, temperature=0.0, max_new_tokens=24)
    assert [r[0].response_ids for r in ref] == out
    assert fed == 2 * sum(map(len, out))                                       # two streams fed per token
    # Every token a delimiter: after the first (hinted) token the plain stream alone decides, as with β → ∞
    out_sw, _, fed_sw = _hd(model, tok, hinted, plain, switch_ids=set(range(len(tok))))
    out_inf, _, _ = _hd(model, tok, hinted, plain, beta=1e9, switch_ids=set())
    assert out_sw == out_inf
    assert fed_sw == sum(map(len, out_sw)) + len(out_sw)                      # 2 for the first token, then 1
    cont = sampler.generate([p + o[:1] for p, o in zip(plain, out_sw)], temperature=0.0, max_new_tokens=23)
    for o, c in zip(out_sw, cont):
        if o[0] != tok.eos_token_id:
            assert o[1:] == c[0].response_ids


@pytest.fixture(scope="module")
def hint_reader(micro_world):
    """A micro base briefly taught to read a hint (a real LM can; the toy base never saw one): ~5 s."""
    from benchmarks.tasks import FAMILIES, draw_payloads
    from harness.data import Example, collate
    world, model, tok = micro_world
    fam, enc = FAMILIES["sort"], lambda s: tok.encode(s, add_special_tokens=False)
    exs = [Example(enc(TEMPLATE.format(label=fam.label(p, "worked"), prompt=fam.prompt(p))),
                   enc(fam.answer(p)) + [tok.eos_token_id]) for p in draw_payloads("sort", "eval", 300, 0)]
    m, rng = copy.deepcopy(model), random.Random(0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(80):
        b = collate(rng.sample(exs, 32), tok.pad_token_id)
        lp = torch.log_softmax(m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1], -1)
        loss = -(lp.gather(-1, b.targets[..., None]).squeeze(-1) * b.loss_mask).sum() / b.loss_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_hd_beats_plain_sampling(micro_world, hint_reader):
    from harness.sampler import HFSampler
    world, _, tok = micro_world
    items, hinted, plain = _contexts(world, tok, 64)
    gen = torch.Generator().manual_seed(0)
    valid = lambda outs: sum(world.verify(i, tok.decode(o, skip_special_tokens=True))  # noqa: E731
                             for i, o in zip(items, outs)) / len(items)
    plain_rate = valid([c[0].response_ids for c in HFSampler(hint_reader, tok).generate(plain, temperature=1.0)])
    hd0 = valid(_hd(hint_reader, tok, hinted, plain, temperature=1e-4, gen=gen)[0])
    hd07 = valid(_hd(hint_reader, tok, hinted, plain, beta=0.7, temperature=0.3, gen=gen)[0])
    assert hd0 > plain_rate + 0.5 and hd07 > plain_rate + 0.5, (hd0, hd07, plain_rate)


def _changed(ctx, before) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in ctx.policy.state_dict().items())


def test_e2e_expert(micro_world):
    ctx, method, trainer = build(micro_world, "idft")
    before = copy.deepcopy(ctx.policy.state_dict())
    stats = train(ctx, method, trainer, 2)
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats)
    assert 0.1 <= stats[0]["gamma"] <= 2.0 and stats[0]["lambda"] == 1.0
    assert _changed(ctx, before)


def test_e2e_hinted(micro_world, hint_reader):
    ctx, method, trainer = build(micro_world, "idft", ["idft.data=hinted"])
    ctx.policy.load_state_dict(hint_reader.state_dict())
    before = copy.deepcopy(ctx.policy.state_dict())
    stats = train(ctx, method, trainer, 2)
    logged = {k: v for _, st in ctx.logged for k, v in st.items()}
    assert logged["train/hd/accepted"] > 0 and ctx.sampler.gen_tokens >= 2 * logged["train/hd/accepted"]
    assert {e.source for e in method._examples} <= {"self", "hinted"}
    assert logged["train/hd/phi_hinted"] > logged["train/hd/phi_expert"]      # HD data is closer to on-policy
    assert len(stats) == 2 and all(math.isfinite(s["loss"]) for s in stats) and _changed(ctx, before)
