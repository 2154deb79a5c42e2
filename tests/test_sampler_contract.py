"""The Sampler contract (harness.sampler), checked on every backend over one tiny saved Qwen2 model.

Legs: `hf` (HFSampler), `vllm` (VLLMSampler on a real engine: needs the vllm package and a CUDA GPU,
skipped otherwise) and `fake-vllm` (VLLMSampler over a stand-in for the few vLLM 0.33 calls it makes,
so its own code, the push, the trimming, the copies and the counting, runs on CPU everywhere).
The helpers of harness.vllm_sampler are plain functions, tested here without vllm.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.sampler import HFSampler
from harness import vllm_sampler as vs
from real_fixtures import build_tiny_model, teach

QUESTIONS = ["What is two plus two?", "Name a colour.", "Say hi.", "Which animal barks loudly at night?"]
ANSWERS = ["four", "blue", "hi", "a dog"]
BACKENDS = ["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.gpu]), "fake-vllm"]
VLLM_BACKENDS = [pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.gpu]), "fake-vllm"]


# --- a stand-in for vLLM 0.33's LLM and SamplingParams (only what VLLMSampler calls) --------------------------
class FakeSamplingParams:
    """Explicit fields only; vLLM's own checks: greedy means n == 1, max_tokens ≥ 1."""

    FIELDS = dict(n=1, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=16, seed=None, logprobs=None,
                  detokenize=True)

    def __init__(self, **kw):
        if set(kw) - set(self.FIELDS):
            raise TypeError(f"unknown SamplingParams fields {set(kw) - set(self.FIELDS)}")
        self.__dict__.update({**self.FIELDS, **kw})
        if self.temperature < 1e-5 and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        assert self.max_tokens >= 1


class FakeLLM:
    """An HF model from the engine's folder behind vLLM's surface: stops at the tokenizer's and the folder's
    generation_config eos ids, returns the end token in token_ids, seeds the global RNGs, drops weights in sleep."""

    def __init__(self, model: str, *, tokenizer: str, seed: int, generation_config: str, enable_sleep_mode=False,
                 **_):
        import os
        from transformers import AutoModelForCausalLM, AutoTokenizer
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and generation_config == "vllm"
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)  # as vLLM's in-process engine does
        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        eos = json.loads((Path(model) / "generation_config.json").read_text()).get("eos_token_id")
        self.stops = {AutoTokenizer.from_pretrained(tokenizer).eos_token_id, *([eos] if isinstance(eos, int) else eos)}
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights)))))
        self.awake, self.events = {"weights", "kv_cache"}, []

    def _load_weights(self, weights) -> None:
        assert "weights" in self.awake, "load_weights while the weights sleep writes to unmapped memory"
        params = dict(self.hf.named_parameters())
        for name, t in weights:
            params[name].data.copy_(t)  # an unknown (unstripped) name fails, as in vLLM
        self.events.append("load")

    def reset_prefix_cache(self) -> None:
        self.events.append("reset")

    def sleep(self, level: int) -> None:
        self.awake.clear()
        if level == 2:  # weights discarded: whatever is not pushed again samples garbage
            for p in self.hf.parameters():
                p.data.fill_(float("nan"))
        self.events.append(f"sleep{level}")

    def wake_up(self, tags: list[str]) -> None:
        self.awake |= set(tags)
        self.events.append("wake:" + ",".join(tags))

    @torch.no_grad()
    def generate(self, prompts: list[dict], params: list[FakeSamplingParams], use_tqdm=True):
        assert self.awake == {"weights", "kv_cache"} and len(prompts) == len(params)
        self.events.append("generate")
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                outputs=[self._one(p["prompt_token_ids"], sp, j) for j in range(sp.n)])
                for p, sp in zip(prompts, params)]

    def _one(self, prompt: list[int], sp: FakeSamplingParams, child: int):
        gen = None if sp.seed is None else torch.Generator().manual_seed(sp.seed + child)  # child i: seed + i
        seq, out, lps = list(prompt), [], []
        for _ in range(sp.max_tokens):
            logits = self.hf(torch.tensor([seq])).logits[0, -1].float()
            if sp.temperature < 1e-5:
                t = int(logits.argmax())
            else:
                probs, order = (logits / sp.temperature).softmax(-1).sort(descending=True)
                probs[1:][probs.cumsum(0)[:-1] >= sp.top_p] = 0  # top-p: the smallest head with mass ≥ top_p
                t = int(order[torch.multinomial(probs, 1, generator=gen)])
            out.append(t)
            lps.append({t: SimpleNamespace(logprob=float(logits.log_softmax(-1)[t]))})  # raw log-probs
            seq.append(t)
            if t in self.stops:
                break
        return SimpleNamespace(token_ids=out, finish_reason="stop" if t in self.stops else "length",
                               logprobs=lps if sp.logprobs is not None else None)


def fake_vllm_module() -> types.ModuleType:
    """A `vllm` module holding the stand-ins."""
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    return mod


# --- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2 taught to answer QUESTIONS briefly and end (so both finished and cut-off samples occur)."""
    folder = tmp_path_factory.mktemp("sampler") / "qwen2"
    return teach(build_tiny_model(folder, "qwen2"), QUESTIONS, ANSWERS)


def prompts_of(tok) -> list[list[int]]:
    """Chat-rendered QUESTIONS (different lengths) as token ids."""
    render = lambda q: tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # noqa: E731
                                                add_generation_prompt=True)
    return [tok.encode(render(q), add_special_tokens=False) for q in QUESTIONS]


def make_sampler(backend: str, model, tok, **kw):
    """The backend's sampler over `model` (float32 on the vLLM legs, so greedy matches the hand computation)."""
    if backend == "hf":
        return HFSampler(model, tok, batch_size=8)
    if backend == "vllm":
        pytest.importorskip("vllm", reason="the vllm leg needs the vllm package (pip install -e .[gpu])")
        if not torch.cuda.is_available():
            pytest.skip("the vllm leg needs a CUDA GPU")
        kw = {"gpu_memory_utilization": 0.2, "max_model_len": 512, "enforce_eager": True, **kw}
    return vs.VLLMSampler(model, tok, dtype="float32", **kw)


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request, tiny):
    """(backend, sampler, model, tokenizer, prompts); the fake leg installs its `vllm` module while it lives."""
    from harness.modeling import load_model
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "fake-vllm":
            mp.setitem(sys.modules, "vllm", fake_vllm_module())
        model, tok = load_model(str(tiny))
        model.eval()
        yield request.param, make_sampler(request.param, model, tok), model, tok, prompts_of(tok)


def greedy_by_hand(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """Argmax of the last position's logits, one full forward per token, until the end token."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            t = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            out.append(t), seq.append(t)
            if t == eos:
                break
    return out


def greedy(sampler, prompts, max_new=8) -> list[list[int]]:
    return [c[0].response_ids for c in sampler.generate(prompts, n=1, temperature=0, max_new_tokens=max_new)]


# --- the contract, on every backend ----------------------------------------------------------------------------
def test_n_completions_per_prompt_in_prompt_order(setup):
    _, sampler, _, _, prompts = setup
    assert len({len(p) for p in prompts}) > 1  # prompts of different lengths share one call
    out = sampler.generate(prompts, n=3, temperature=1.0, max_new_tokens=5)
    assert [len(cs) for cs in out] == [3] * len(prompts)
    assert all(c.prompt_ids == p for p, cs in zip(prompts, out) for c in cs)


def test_greedy_is_deterministic_and_the_argmax_continuation(setup):
    _, sampler, model, tok, prompts = setup
    a = sampler.generate(prompts, n=2, temperature=0, max_new_tokens=8)
    b = sampler.generate(prompts, n=2, temperature=0, max_new_tokens=8)
    assert [[c.response_ids for c in cs] for cs in a] == [[c.response_ids for c in cs] for cs in b]
    assert all(cs[0].response_ids == cs[1].response_ids for cs in a)  # greedy n > 1: n copies
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))  # no left padding in HF's batch
    assert a[longest][0].response_ids == greedy_by_hand(model, prompts[longest], 8, tok.eos_token_id)


def test_end_token_iff_finished_and_text_is_the_decode(setup):
    _, sampler, _, tok, prompts = setup
    eos = tok.eos_token_id
    comps = [c for cs in sampler.generate(prompts, n=1, temperature=0, max_new_tokens=12) for c in cs]
    comps += [c for cs in sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=3) for c in cs]
    for c in comps:
        assert c.finished == (bool(c.response_ids) and c.response_ids[-1] == eos)
        assert eos not in c.response_ids[:-1]
        assert c.text == tok.decode(c.response_ids, skip_special_tokens=True)
    assert {c.finished for c in comps} == {True, False}  # the taught answers end; 3-token cuts do not


@pytest.mark.parametrize("max_new", [1, 2, 5])
def test_max_new_tokens_is_respected(setup, max_new):
    _, sampler, _, _, prompts = setup
    out = sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=max_new)
    assert all(1 <= len(c.response_ids) <= max_new for cs in out for c in cs)


def test_cost_counts_prefill_per_sample_and_generated_tokens(setup):
    _, sampler, _, _, prompts = setup
    before = dict(sampler.cost.tokens)
    out = sampler.generate(prompts, n=3, temperature=1.0, max_new_tokens=6)
    assert sampler.cost.tokens["prefill"] - before["prefill"] == 3 * sum(len(p) for p in prompts)
    assert sampler.cost.tokens["gen"] - before["gen"] == sum(len(c.response_ids) for cs in out for c in cs)
    assert sampler.gen_seconds > 0


def test_changed_weights_show_in_the_next_greedy_generate(setup):
    _, sampler, model, tok, prompts = setup
    before = greedy(sampler, prompts)
    norm = model.model.norm.weight
    with torch.no_grad():
        norm.mul_(-1)  # logits negate: the argmax becomes the argmin
    try:
        after = greedy(sampler, prompts)
        assert after[0] == greedy_by_hand(model, prompts[0], 8, tok.eos_token_id)
        assert after != before
    finally:
        with torch.no_grad():
            norm.mul_(-1)
    assert greedy(sampler, prompts) == before


# --- VLLMSampler beyond the contract (fake engine on CPU; the real one where vllm and CUDA are) ----------------
@pytest.mark.parametrize("setup", VLLM_BACKENDS, indirect=True)
def test_weights_are_pushed_only_when_changed(setup):
    _, sampler, model, _, prompts = setup
    pushes, real_push = [], sampler._push
    sampler._push = lambda w: (pushes.append(1), real_push(w))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        greedy(sampler, prompts[:1]), greedy(sampler, prompts[:1])
        assert pushes == []  # unchanged since the last push (or the construction's save)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        model(torch.tensor([prompts[0]])).logits.sum().backward()
        opt.step(), opt.zero_grad()
        greedy(sampler, prompts[:1]), greedy(sampler, prompts[:1])
        assert pushes == [1]
    finally:
        model.load_state_dict(saved)
        del sampler._push


@pytest.mark.parametrize("setup", VLLM_BACKENDS, indirect=True)
def test_logprobs_are_the_sampled_tokens_log_softmax(setup):
    _, sampler, model, _, prompts = setup
    c = sampler.generate(prompts[:1], n=1, temperature=0, max_new_tokens=4, logprobs=True)[0][0]
    assert isinstance(c, vs.ScoredCompletion) and len(c.logprobs) == len(c.response_ids)
    with torch.no_grad():
        full = torch.tensor([prompts[0] + c.response_ids])
        ref = model(full).logits[0, len(prompts[0]) - 1:-1].log_softmax(-1)
    want = ref.gather(-1, torch.tensor(c.response_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-3)


@pytest.mark.parametrize("setup", VLLM_BACKENDS, indirect=True)
def test_from_checkpoint_samples_the_saved_model_then_the_policy_returns(setup, tmp_path):
    _, sampler, model, tok, prompts = setup
    before = greedy(sampler, prompts)
    with torch.no_grad():
        model.model.norm.weight.mul_(-1)
    model.save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        model.model.norm.weight.mul_(-1)
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    view, seconds, gen = sampler.from_checkpoint(tmp_path / "ckpt"), sampler.gen_seconds, sampler.cost.tokens["gen"]
    out = view.generate(prompts[:1], n=1, temperature=0, max_new_tokens=8)[0][0]
    assert out.response_ids == greedy_by_hand(saved, prompts[0], 8, tok.eos_token_id) != before[0]
    assert view.gen_seconds > 0 and sampler.gen_seconds == seconds  # its seconds are its own
    assert sampler.cost.tokens["gen"] == gen + len(out.response_ids)  # its tokens go to the run's counter
    assert greedy(sampler, prompts) == before


def test_sleep_mode_wakes_pushes_and_sleeps_around_each_generate(tiny, monkeypatch):
    from harness.modeling import load_model
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    model, tok = load_model(str(tiny))
    sampler = vs.VLLMSampler(model, tok, enable_sleep_mode=True)
    prompts = prompts_of(tok)
    first = greedy(sampler, prompts)
    assert first == greedy(sampler, prompts)  # level 2 dropped the weights; each wake pushed them again
    assert sampler.llm.events[:8] == ["sleep2", "wake:weights", "load", "reset", "wake:kv_cache", "generate",
                                      "sleep2", "wake:weights"]


def test_building_the_engine_leaves_the_callers_rng_streams(tiny, monkeypatch):
    from harness.modeling import load_model
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    model, tok = load_model(str(tiny))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    want = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    vs.VLLMSampler(model, tok, seed=7)  # FakeLLM seeds all three, as vLLM does
    assert (torch.rand(2).tolist(), random.random(), np.random.rand()) == (want[0].tolist(), *want[1:])


def test_without_vllm_building_is_a_one_line_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(HarnessError, match=r"^vllm is not installed; `pip install -e \.\[gpu\]`.*sampler=hf$"):
        vs.VLLMSampler(torch.nn.Linear(1, 1), None)


def test_importing_the_module_does_not_import_vllm():
    code = "import sys, harness.vllm_sampler; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# --- pure helpers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, want", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("module.model.norm.weight", "model.norm.weight"),
    ("_orig_mod.model.embed_tokens.weight", "model.embed_tokens.weight"),
    ("model.layers.1._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight",
     "model.layers.1.mlp.up_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.v_proj.base_layer.weight", "model.layers.0.self_attn.v_proj.weight"),
])
def test_wrapper_prefixes_are_stripped(name, want):
    assert vs.strip_wrapper_prefixes(name) == want


def test_policy_weights_give_each_tensor_once_under_hf_names(tiny):
    from harness.modeling import load_model
    model, _ = load_model(str(tiny))
    wrapped = torch.nn.Module()
    wrapped.module = model  # a DDP-style wrapper
    names = [n for n, _ in vs.policy_weights(wrapped)]
    assert names == [n for n, _ in model.named_parameters()] and "lm_head.weight" not in names  # tied: once
    model.model.norm.lora_A = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(HarnessError, match="unmerged LoRA"):
        list(vs.policy_weights(model))


def test_weights_key_changes_with_writes_not_with_reads():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    key = vs.weights_key(model)
    model(torch.ones(2, 3)).sum().backward()
    assert vs.weights_key(model) == key  # a forward and backward write no parameter
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert vs.weights_key(model) != key
    key = vs.weights_key(model)
    model[0].weight.data = model[0].weight.data.clone()  # replaced, not written: a new storage
    assert vs.weights_key(model) != key


def test_sampling_kwargs_are_explicit_and_greedy_asks_for_one():
    kw = vs.sampling_kwargs(5, 0.7, 0.9, 40, seed=11, logprobs=True)
    assert kw == dict(n=5, temperature=0.7, top_p=0.9, top_k=0, min_p=0.0, max_tokens=40, seed=11, logprobs=0,
                      detokenize=False)
    g = vs.sampling_kwargs(5, 0.0, 0.9, 1, seed=11)
    assert (g["n"], g["temperature"], g["top_p"], g["seed"], g["logprobs"], g["max_tokens"]) == (1, 0.0, 1.0, None,
                                                                                                   None, 1)
    FakeSamplingParams(**kw), FakeSamplingParams(**g)  # the keys vLLM takes, and greedy stays valid
    with pytest.raises(HarnessError, match="max_new_tokens=0"):
        vs.sampling_kwargs(1, 1.0, 1.0, 0, seed=0)


def test_request_seeds_differ_per_seed_call_and_prompt_and_leave_room_for_children():
    seeds = [vs.request_seed(s, c, i) for s in range(2) for c in range(50) for i in range(20)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2 ** 31 for s in seeds)
    assert vs.request_seed(0, 3, 4) == vs.request_seed(0, 3, 4)  # reproducible: a rank keys by the call's index
    spaced = sorted(seeds)
    assert min(b - a for a, b in zip(spaced, spaced[1:])) > 8  # children s+1.. of one rarely meet another's


def test_trim_cuts_after_the_first_end_token():
    assert vs.trim([5, 6, 2, 7], eos=2, logprobs=[-1.0, -2.0, -3.0, -4.0]) == ([5, 6, 2], True, [-1.0, -2.0, -3.0])
    assert vs.trim([5, 6], eos=2) == ([5, 6], False, None)


def test_a_rank_sampling_its_share_draws_what_the_whole_call_draws(setup):
    # RankShardedSampler hands each rank prompts[rank::N] with their indices in the whole call: keyed by those,
    # a share's samples are the whole call's (HF: per-row uniforms; vLLM: per-request seeds).
    backend, _, model, tok, prompts = setup
    whole = make_sampler(backend, model, tok).generate(prompts, n=2, temperature=1.0, max_new_tokens=6)
    share = make_sampler(backend, model, tok).generate(prompts[1::2], n=2, temperature=1.0, max_new_tokens=6,
                                                       indices=[1, 3])
    assert [[c.response_ids for c in row] for row in share] == [[c.response_ids for c in whole[i]] for i in (1, 3)]
    other = make_sampler(backend, model, tok).generate(prompts[1::2], n=2, temperature=1.0, max_new_tokens=6)
    assert [[c.response_ids for c in row] for row in other] != [[c.response_ids for c in row] for row in share]


def test_a_checkpoint_views_share_draws_what_its_whole_call_draws(setup, tmp_path):
    # TMS's checkpoints on the vLLM engine (VLLMSampler.from_checkpoint) are sampled in shares under DDP too
    backend, _, model, tok, prompts = setup
    if backend == "hf":
        pytest.skip("transformers samples a checkpoint with an HFSampler of its own (the case above)")
    model.save_pretrained(tmp_path / "ckpt")
    whole = make_sampler(backend, model, tok).from_checkpoint(tmp_path / "ckpt").generate(
        prompts, n=2, temperature=1.0, max_new_tokens=6)
    share = make_sampler(backend, model, tok).from_checkpoint(tmp_path / "ckpt").generate(
        prompts[1::2], n=2, temperature=1.0, max_new_tokens=6, indices=[1, 3])
    assert [[c.response_ids for c in row] for row in share] == [[c.response_ids for c in whole[i]] for i in (1, 3)]


# --- the GPU path's findings (issue 26), on the fake engine ------------------------------------------------------
@pytest.mark.parametrize("setup", VLLM_BACKENDS, indirect=True)
@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_an_adamw_step_pushes_the_new_weights(setup, kernel):
    # torch's fused AdamW writes the parameters without bumping their version counters: the push must still follow
    _, sampler, model, tok, prompts = setup
    pushes, real_push = [], sampler._push
    sampler._push = lambda w: (pushes.append(1), real_push(w))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        greedy(sampler, prompts[:1])  # the engine holds the current weights (a test before may have reloaded them)
        pushes.clear()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, **{kernel: True})
        model(torch.tensor([prompts[0]])).logits.sum().backward()
        opt.step(), opt.zero_grad()
        got = greedy(sampler, prompts[:1])
        assert pushes == [1]
        assert got[0] == greedy_by_hand(model, prompts[0], 8, tok.eos_token_id)  # the stepped weights sampled
    finally:
        model.load_state_dict(saved)
        del sampler._push


def test_weights_key_changes_after_adamw_foreach_and_fused_steps():
    model = torch.nn.Linear(3, 3)
    for kernel in ("foreach", "fused"):
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, **{kernel: True})
        model(torch.ones(2, 3)).sum().backward()
        key = vs.weights_key(model)
        opt.step()
        assert vs.weights_key(model) != key, kernel


def test_sleep_mode_empties_torchs_cache_before_every_wake(tiny, monkeypatch):
    from harness.modeling import load_model
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    model, tok = load_model(str(tiny))
    sampler = vs.VLLMSampler(model, tok, enable_sleep_mode=True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: sampler.llm.events.append("empty_cache"))
    greedy(sampler, prompts_of(tok)[:1])
    greedy(sampler, prompts_of(tok)[:1])
    events = sampler.llm.events
    wakes = [i for i, e in enumerate(events) if e == "wake:weights"]
    assert len(wakes) == 2 and all(events[i - 1] == "empty_cache" for i in wakes)


def test_close_frees_the_engine_before_a_second_one_starts(tiny, monkeypatch):
    import gc
    import weakref
    from harness.modeling import load_model
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    model, tok = load_model(str(tiny))
    sampler = vs.VLLMSampler(model, tok)
    sampler.llm.myself = sampler.llm  # vLLM's engine objects refer to each other: a cycle only gc frees
    engine, emptied = weakref.ref(sampler.llm), []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(engine() is None))
    gc.disable()  # so only close() can collect it
    try:
        sampler.close()
        assert engine() is None and emptied == [True]  # gone, then torch's cache emptied
    finally:
        gc.enable()


def test_a_two_rank_wrappers_seconds_reach_the_inner_counter(monkeypatch):
    # methods add the seconds of their own decoding loops (`ctx.sampler.gen_seconds += ...`); cost/gen_s reads it
    from harness import distributed
    from harness.run_hooks import run_cost
    from harness.sampler import RankShardedSampler
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    inner = HFSampler(torch.nn.Linear(1, 1), None)
    inner.gen_seconds = 1.5
    wrapper = RankShardedSampler(inner)
    wrapper.gen_seconds += 2.0
    assert inner.gen_seconds == 3.5 and wrapper.gen_seconds == 3.5
    trainer = SimpleNamespace(cost=inner.cost, train_seconds=0.0)
    assert run_cost(torch.nn.Linear(1, 1), trainer, wrapper, 0.0, 0.0)["cost/gen_s"] == 3.5
