"""Every speed shortcut gives the numbers of the code it replaced, bit for bit, on the micro world.

Covered: the stop-string check (skipped where the vocabulary cannot produce the string, and not repeated for
finished rows), the frozen base's cached log-probs in `kl_to_base`, the per-process evaluator cache of
`prepare_world` (shared lm-eval tasks rebound to each run's world and tokenizer), and whole runs whose set-up
comes from those caches.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import StoppingCriteria

from benchmarks.world import ToyWorld, WorldConfig
from harness import greedy, logprobs, metrics
from harness.baseline import label_set
from harness.evaluation import Evaluator
from harness.greedy import greedy_generate, producible_stops


class _FullDecodeStop(StoppingCriteria):
    """The stop check as it was: decode every row's whole response at every step."""

    def __init__(self, tokenizer, stop, prompt_len, eos_ids=None):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len

    def __call__(self, input_ids, scores, **_):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _prompts(world, n=40):
    return [it.prompt for items in world.eval_items.values() for it in items][:n]


def test_producible_stops_drops_only_strings_no_token_can_write(micro_world):
    _, model, tok = micro_world
    v = model.config.vocab_size
    assert producible_stops(tok, ["\n"], v) == []  # the char vocabulary has no newline
    assert producible_stops(tok, ["5", ":", "5:", ""], v) == ["5", ":", "5:"]
    assert producible_stops(tok, ["\n5"], v) == []  # a newline is needed to match
    # A space may come from joining tokens and a non-ASCII character from byte pieces: always checked.
    assert producible_stops(tok, [" ", "é"], v) == [" ", "é"]


@pytest.mark.parametrize("stop", [["\n"], ["5"], [":"], ["1", "\n"], ["12"]])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_stop_check_shortcuts_give_identical_generations(micro_world, monkeypatch, stop, batch_size):
    world, model, tok = micro_world
    prompts = _prompts(world)
    fast = greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=batch_size, stop=stop)
    monkeypatch.setattr(greedy, "_StopOnStrings", _FullDecodeStop)
    monkeypatch.setattr(greedy, "producible_stops", lambda tok, stops, vocab_size=0: [s for s in stops if s])
    slow = greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=batch_size, stop=stop,
                           drop_finished=False)
    assert fast == slow


@pytest.mark.parametrize("stop", [["\n"], ["5"], ["1", "2"]])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_dropping_finished_rows_gives_generates_answers(micro_world, stop, batch_size):
    world, model, tok = micro_world
    model = copy.deepcopy(model)
    with torch.no_grad():  # a perturbed base rambles on some prompts and stops on others: rows leave at many steps
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    prompts = _prompts(world, 60)
    fast = greedy_generate(model, tok, prompts, max_new_tokens=16, batch_size=batch_size, stop=stop,
                           drop_finished=True)
    slow = greedy_generate(model, tok, prompts, max_new_tokens=16, batch_size=batch_size, stop=["\u0000"],
                           drop_finished=False)
    assert fast == [greedy.cut_at_stop(r, stop) for r in slow]
    lengths = {len(r) for r in slow}
    assert len(lengths) >= 3  # answers of several lengths, so rows did leave the batch at different steps


def test_greedy_decoding_falls_back_to_generate_where_a_processor_applies(micro_world, monkeypatch):
    _, model, tok = micro_world
    assert greedy.plain_argmax_greedy(model)
    model = copy.deepcopy(model)
    model.generation_config.repetition_penalty = 1.1  # e.g. Qwen2.5-Instruct's generation_config.json
    assert not greedy.plain_argmax_greedy(model)
    called = []
    monkeypatch.setattr(greedy, "decode_dropping_finished", lambda *a, **k: called.append(1))
    greedy_generate(model, tok, ["add:12345="], max_new_tokens=4, batch_size=2)
    assert not called


def test_stop_check_flags_the_same_unfinished_rows(micro_world):
    """Row by row, the new check agrees with a full decode wherever generate still reads it (unfinished rows)."""
    _, _, tok = micro_world
    ids = [tok.encode(t, add_special_tokens=False) for t in ("ab", "ab", "ab", "ab")]
    rows = torch.tensor(ids)
    eos = tok.eos_token_id
    steps = [[tok.encode(c, add_special_tokens=False)[0] for c in "5x1y"],
             [eos, tok.encode("5", add_special_tokens=False)[0], tok.pad_token_id, tok.pad_token_id],
             [tok.pad_token_id] * 4]
    new = greedy._StopOnStrings(tok, ["5", "1"], prompt_len=2, eos_ids=[eos])
    old = _FullDecodeStop(tok, ["5", "1"], prompt_len=2)
    finished = torch.zeros(4, dtype=torch.bool)
    for step in steps:
        rows = torch.cat([rows, torch.tensor(step).unsqueeze(1)], 1)
        finished |= rows[:, -1] == eos
        a, b = new(rows, None), old(rows, None)
        assert torch.equal(a[~finished], b[~finished])
        finished |= a


def _perturbed(model, seed=0, scale=0.02):
    policy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return policy


def _kl_set(world, tok, n=24):
    prompts, labels = label_set(world, tok)
    return prompts[:n], labels[:n]


def test_kl_with_cached_base_equals_uncached_exactly(micro_world):
    world, model, tok = micro_world
    base = copy.deepcopy(model).eval().requires_grad_(False)
    prompts, responses = _kl_set(world, tok)
    for seed in range(3):  # a run's evaluation points: the first fills the cache, the others read it
        policy = _perturbed(model, seed)
        ref = metrics.kl_to_base(policy, base, prompts, responses, 5, tok.pad_token_id)
        got = metrics.kl_to_base(policy, base, prompts, responses, 5, tok.pad_token_id, cache_base=True)
        assert got == ref and ref > 0
    assert metrics._BASE_LOGP[base][1] is not None  # the toy-sized set was cached
    # The base itself, scored through the cache: exactly zero, like the uncached path.
    assert metrics.kl_to_base(base, base, prompts, responses, 5, tok.pad_token_id, cache_base=True) == \
        metrics.kl_to_base(base, base, prompts, responses, 5, tok.pad_token_id)


def test_kl_cache_follows_changes_of_base_set_and_batching(micro_world):
    world, model, tok = micro_world
    base = copy.deepcopy(model).eval().requires_grad_(False)
    policy = _perturbed(model, 1)
    prompts, responses = _kl_set(world, tok)
    pad = tok.pad_token_id
    kl = lambda p, r, bs, c: metrics.kl_to_base(policy, base, p, r, bs, pad, cache_base=c)  # noqa: E731
    assert kl(prompts, responses, 5, True) == kl(prompts, responses, 5, False)
    # Another KL set or batch size: recomputed, still exact.
    assert kl(prompts[:10], responses[:10], 5, True) == kl(prompts[:10], responses[:10], 5, False)
    assert kl(prompts, responses, 7, True) == kl(prompts, responses, 7, False)
    # An in-place change of the base's weights invalidates what was cached.
    with torch.no_grad():
        next(base.parameters()).mul_(1.5)
    assert kl(prompts, responses, 7, True) == kl(prompts, responses, 7, False)


def test_kl_cache_size_guard_and_chunked_path(micro_world, monkeypatch):
    world, model, tok = micro_world
    base = copy.deepcopy(model).eval().requires_grad_(False)
    policy = _perturbed(model, 2)
    prompts, responses = _kl_set(world, tok)
    pad = tok.pad_token_id
    ref = metrics.kl_to_base(policy, base, prompts, responses, 6, pad)
    monkeypatch.setattr(metrics, "KL_CACHE_ELEMENTS", 1000)  # a real vocabulary: too large to keep
    assert metrics.kl_to_base(policy, base, prompts, responses, 6, pad, cache_base=True) == ref
    assert metrics._BASE_LOGP[base][1] is None
    monkeypatch.undo()
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 2 * model.config.vocab_size)  # token_kl chunks: no cache
    chunked = metrics.kl_to_base(policy, base, prompts, responses, 6, pad)
    assert metrics.kl_to_base(policy, base, prompts, responses, 6, pad, cache_base=True) == chunked
    assert metrics._BASE_LOGP[base][1] is None
    assert chunked == pytest.approx(ref, abs=1e-5)


def _same(a, b):
    for sp in ("val", "eval"):
        assert a[sp].acc == b[sp].acc and a[sp].responses == b[sp].responses
        for t in a[sp].correct:
            np.testing.assert_array_equal(a[sp].correct[t], b[sp].correct[t])


def test_rebound_evaluator_scores_like_a_fresh_one(micro_world):
    world, model, tok = micro_world
    built = Evaluator(world, tok, 16)
    same_data = ToyWorld(WorldConfig(**world.cfg.model_dump()))  # another World object of the same data
    from harness.modeling import load_model
    _, tok2 = load_model(world.base_path(progress=False))
    reused = built.rebind(same_data, tok2, 16)
    assert reused.task_dict is built.task_dict and reused.world is same_data and reused.tokenizer is tok2
    policy = _perturbed(model, 3, scale=0.05)
    for m in (model, policy):
        _same(reused.evaluate(m), Evaluator(same_data, tok2, 16).evaluate(m))
    other = ToyWorld(WorldConfig(**{**world.cfg.model_dump(), "n_eval": world.cfg.n_eval - 1}))
    with pytest.raises(ValueError):
        built.rebind(other, tok)


def test_prepare_world_reuses_the_evaluator_only_for_the_same_data(micro_world, tmp_path, monkeypatch):
    from harness import run as run_mod
    from harness.config import resolve_config
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(run_mod, "_EVALUATORS", {})
    cfg = resolve_config(world="micro", method="sft")
    first, second = run_mod.prepare_world(cfg, progress=False), run_mod.prepare_world(cfg, progress=False)
    ev1, ev2 = first[4], second[4]
    assert ev1 is not ev2 and ev1.task_dict is ev2.task_dict and ev2.tokenizer is second[3]
    assert first[5] == second[5]  # the same base scores
    cfg2 = resolve_config(world="micro", method="sft", overrides=[f"world.n_eval={cfg.world.n_eval - 2}"])
    ev3 = run_mod.prepare_world(cfg2, progress=False)[4]
    assert ev3.task_dict is not ev1.task_dict and len(ev3.items["eval"][cfg2.world.target]) == cfg2.world.n_eval


def _logged(run_id):
    import mlflow
    client = mlflow.MlflowClient()
    data = client.get_run(run_id).data
    timing = {"cost/train_s", "cost/gen_s", "cost/eval_s", "cost/wall_s"}
    return {k: [(h.step, h.value) for h in client.get_metric_history(run_id, k)]
            for k in data.metrics if k not in timing}


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_a_run_with_warm_caches_logs_what_a_cold_one_does(micro_world, tmp_path, monkeypatch, method):
    """Every shortcut off (fresh evaluator, base-run search, base scored at every evaluation, full stop check,
    `generate` decoding finished rows) vs every shortcut on and the caches warm: the same metrics at every step."""
    import mlflow
    from harness import run as run_mod
    from harness.config import resolve_config
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    over = ["train.max_steps=4", "train.eval_every=2", "train.lr=3e-3"]
    kl_to_base = metrics.kl_to_base
    logged = []
    for cold in (True, False):
        with monkeypatch.context() as mp:
            if cold:
                mp.setattr(run_mod, "_EVALUATORS", {})
                mp.setattr(run_mod, "_BASE_RUNS", set())
                mp.setattr(metrics, "kl_to_base", lambda *a, cache_base=False, **k: kl_to_base(*a, **k))
                mp.setattr(greedy, "_StopOnStrings", _FullDecodeStop)
                mp.setattr(greedy, "producible_stops", lambda tok, stops, vocab_size=0: [s for s in stops if s])
                mp.setattr(greedy, "plain_argmax_greedy", lambda model: False)  # generate at full batch width
            cfg = resolve_config(world="micro", method=method, overrides=over)
            if not cold:
                run_mod.prepare_world(cfg, progress=False)  # warm: the evaluator and base run are cached
            cfg.tracking.run_name = f"{method}-{'cold' if cold else 'warm'}"
            run_mod.run(cfg, progress=False)
        df = mlflow.search_runs(experiment_names=[cfg.tracking.experiment])
        rid = df[df["tags.mlflow.runName"] == cfg.tracking.run_name].iloc[0].run_id
        logged.append(_logged(rid))
    cold, warm = logged
    assert cold.keys() == warm.keys() and "kl_to_base" in cold
    for k in cold:
        assert [(s, repr(v)) for s, v in cold[k]] == [(s, repr(v)) for s, v in warm[k]], k
    assert any(v > 0 for _, v in cold["kl_to_base"]) and all(math.isfinite(v) for _, v in cold["kl_to_base"])
    # Only one base run, though the second run did not search for it.
    df = mlflow.search_runs(experiment_names=[cfg.tracking.experiment])
    assert (df["tags.kind"] == "base").sum() == 1


def test_the_decode_loop_builds_no_autograd_graph_whoever_calls_it(micro_world):
    # its callers run under no_grad or inference_mode today; the loop must not rely on that (a graph per step
    # would hold every step's activations)
    _, model, tok = micro_world
    grad_enabled: list[bool] = []
    handle = model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        ids = torch.tensor([tok.encode("sort 3 1 2:", add_special_tokens=False)])
        greedy.decode_dropping_finished(model, ids, torch.ones_like(ids), 4, [tok.eos_token_id])
    finally:
        handle.remove()
    assert grad_enabled and not any(grad_enabled)


def test_lockstep_decoding_keeps_passing_until_every_rank_is_done(micro_world):
    # One process standing in for a rank whose rows end first: the tokens are those of plain decoding, and the
    # loop keeps running forward passes (outputs discarded) until the others say they are done too.
    world, model, tok = micro_world
    prompts = [tok.encode(p, add_special_tokens=False) for p in _prompts(world, 3)]
    T = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (T - len(p)) + p for p in prompts])
    attn = (torch.arange(T)[None] >= torch.tensor([T - len(p) for p in prompts])[:, None]).long()
    plain = greedy.decode_dropping_finished(model, ids, attn, 20, [tok.eos_token_id])
    passes, asked = [], []
    handle = model.register_forward_hook(lambda *_: passes.append(1))
    try:
        others_end_at = max(map(len, plain)) + 3  # the slowest rank needs 3 more steps than this one
        locked = greedy.decode_dropping_finished(
            model, ids, attn, 20, [tok.eos_token_id],
            lockstep=lambda done_here: asked.append(done_here) or (done_here and len(asked) >= others_end_at))
    finally:
        handle.remove()
    assert locked == plain and all(t[-1] == tok.eos_token_id for t in plain)
    assert len(passes) == others_end_at  # the prefill, then one pass per step until the others were done
    assert asked[-4:] == [True] * 4 and not any(asked[:len(max(plain, key=len)) - 1])
