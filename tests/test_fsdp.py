"""FSDP2 training (`train.parallel=fsdp`, harness/fsdp.py): 2 gloo processes give the 1-process result of the same batch.

One launch of 2 CPU processes trains the cases of test_distributed.py with the policy sharded: the engine-only
tiny Llama (untied head, a one-example step that leaves rank 1 only filler passes), one bf16-autocast scoring
pass with gradients, SFT with a k2 penalty (the sharded reference scored inside the loss), on-policy SFT and GRPO (μ = 2,
β > 0: π_old and reference log-probs; also over uneven, padded shares with gradient checkpointing) on the micro world (tied
embeddings), 3 steps each, each rank sampling its share of the rollouts in lockstep with the other; then a full checkpoint written by rank 0 and read by both, `reset_to_base` into the
shards, and one `harness.run.run` that evaluates on rank 0 from the gathered copy and saves checkpoints of record
(inside an evaluation and after the last one). The pytest process runs the same in one process (where
`train.parallel=fsdp` is the ordinary path) and compares.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_helpers import free_port, join_as_rank, once, spawn_ranks
from test_distributed import (ATOL, CASES, FLOOR_FACTOR, MAX_DIFF, STEPS, WORLD, _flat, _maxdiff, engine_case,
                              single_process, train_case)

FSDP = ("train.parallel=fsdp",)
# GRPO over 9 examples: shares of 5 and 4, so rank 1 pads its π_old scoring (2 per pass: 3 passes, not 2) and its
# micro-batches (2 per pass: 3, not 2) to rank 0's counts; with the decoder layers' activations recomputed.
UNEVEN = ("grpo.prompts_per_step=3", "grpo.group_size=3", "eval.score_batch_size=2", "train.micro_batch_size=2",
          "train.gradient_checkpointing=true")
LAUNCH_TIMEOUT_S = 300
RUN = ["train.max_steps=2", "train.eval_every=1", "train.batch_size=8", "train.micro_batch_size=4",
       "eval.bootstrap_iters=0", "eval.record_backend=hf", "eval.record_steps=[1]", "train.fused_adamw=true",
       "train.parallel=fsdp"]
COMPARED = ("target_gain", "nontarget_drop", "pld", "kl_to_base")


def checkpoint_case(micro_world) -> dict:
    """One sharded SFT step, then save (all ranks) / load (each rank) / delete a checkpoint, then reset to the base
    (from the float32 reference's shards; then again from disk, with a bfloat16 reference)."""
    from harness import distributed, fsdp
    from method_harness import build, train
    torch.manual_seed(0)
    ctx, m, trainer = build(micro_world, "sft", CASES["sft"] + list(FSDP))
    train(ctx, m, trainer, 1)
    assert ctx.sharded and fsdp.is_sharded(ctx.base)
    local = sum(p.to_local().numel() for p in trainer.model.parameters())
    share = ctx.my_share([object() for _ in range(5)])
    trained = _flat(trainer.model)
    path = ctx.save_checkpoint("fsdp-ckpt")
    loaded = _flat(ctx.load_checkpoint(path))
    paths = distributed.all_gather_object(str(path))
    ctx.delete_checkpoint(path)
    distributed.barrier()
    gone = not path.exists()
    ctx.reset_to_base()
    reset = float((_flat(trainer.model) - _flat(micro_world[1])).abs().max())
    ctx.close()
    # A bfloat16 reference (sharded too): reset_to_base copies the float32 weights from disk into the shards.
    ctx, m, trainer = build(micro_world, "sft", CASES["sft"] + list(FSDP) + ["train.frozen_dtype=bfloat16"])
    train(ctx, m, trainer, 1)
    ctx.reset_to_base()
    out = {"ckpt_diff": float((loaded - trained).abs().max()), "paths": paths, "gone": gone,
           "reset_diff": max(reset, float((_flat(trainer.model) - _flat(micro_world[1])).abs().max())),
           "moved": float((trained - _flat(micro_world[1])).abs().max()), "local_frac": local / trained.numel(),
           "share": len(share)}
    ctx.close()
    return out


def autocast_case() -> dict:
    """Gradients of one bf16-autocast scoring pass (the engine's first, which also splits the model) of the tiny
    Llama, sharded, against the same pass unsharded; every rank scores the whole batch at half weight."""
    from harness import distributed, fsdp
    from harness.logprobs import token_logprobs
    from test_engine import tiny_model
    grads = []
    for model, share in ((tiny_model(), 1), (fsdp.shard(tiny_model()), distributed.world_size())):
        ids = torch.randint(3, 20, (4, 8), generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = token_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], torch.ones(4, 7))[0]
        (lp.sum() / share).backward()
        fsdp.settle(model)
        grads.append({n: None if p.grad is None else fsdp.full(p.grad) for n, p in model.named_parameters()})
    plain, sharded = grads
    return {"missing": [n for n, g in sharded.items() if g is None],
            "diff": max(float((plain[n] - g).abs().max()) for n, g in sharded.items() if g is not None)}


def _stub_record(out: Path, tag: str):
    """harness.record_eval's two entry points, replaced: keep a copy of each checkpoint of record, score nothing."""
    def record_eval(world, path, backend="hf", out_dir=None, device="cpu", **_):
        shutil.copytree(path, out / f"{tag}-{Path(path).name}")
    return record_eval, lambda res, in_run: {"record/stub": 1.0}


def _rank_main(rank: int, port: int, out: str, base_path: str, mlflow_uri: str) -> None:
    """One of the WORLD processes: the engine and method cases sharded, a checkpoint, then one logged run."""
    micro = join_as_rank(rank, WORLD, port, mlflow_uri, base_path)
    from harness import evaluation, record_eval, run as run_mod
    from harness.config import resolve_config
    results = {"engine": engine_case(parallel="fsdp"), "autocast": autocast_case(), **{m: train_case(micro, m, extra=FSDP) for m in CASES},
               "grpo_uneven": train_case(micro, "grpo", extra=FSDP + UNEVEN), "checkpoint": checkpoint_case(micro)}
    torch.save(results, Path(out) / f"rank{rank}.pt")

    calls = {"evaluate": 0}
    evaluate = evaluation.Evaluator.evaluate

    def counted(*a, **k):
        calls["evaluate"] += 1
        return evaluate(*a, **k)
    evaluation.Evaluator.evaluate = counted
    record_eval.record_eval, record_eval.record_metrics = _stub_record(Path(out), f"rank{rank}")
    cfg = resolve_config(world="micro", method="sft", overrides=RUN + [
        "tracking.experiment=fsdp", "tracking.run_name=fsdp-run"])
    final = run_mod.run(cfg, progress=False)
    (Path(out) / f"final{rank}.json").write_text(json.dumps({**calls, "final": final}))
    torch.distributed.destroy_process_group()


def _one_process_run(out: Path) -> dict:
    """The same `run` in this process (WORLD_SIZE 1: `train.parallel=fsdp` is the ordinary path)."""
    from harness import record_eval
    from harness.config import resolve_config
    from harness.run import run
    cfg = resolve_config(world="micro", method="sft", overrides=RUN + ["tracking.experiment=one"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out}/one.db")
        mp.delenv("WORLD_SIZE", raising=False)
        stub, metrics = _stub_record(out, "one")
        mp.setattr(record_eval, "record_eval", stub)
        mp.setattr(record_eval, "record_metrics", metrics)
        return run(cfg, progress=False)


@pytest.fixture(scope="module")
def launched(micro_world, tmp_path_factory):
    """The WORLD-process results (per rank) and the 1-process references computed here."""
    out = tmp_path_factory.mktemp("fsdp")
    uri = f"sqlite:///{out}/mlflow.db"
    spawn_ranks(_rank_main, (free_port(), str(out), micro_world[0].base_path(progress=False), uri), WORLD,
                LAUNCH_TIMEOUT_S)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    finals = [json.loads((out / f"final{r}.json").read_text()) for r in range(WORLD)]
    single, floor = single_process(micro_world)
    single = {**single, "grpo_uneven": train_case(micro_world, "grpo", extra=UNEVEN)}
    floor = {**floor, "grpo_uneven": floor["grpo"]}
    return ranks, finals, single, floor, _one_process_run(out), out, uri


@pytest.mark.parametrize("case", ["engine", *CASES, "grpo_uneven"])
def test_two_sharded_ranks_match_one_process(launched, case, micro_world):
    ranks, _, single, floor, _, _, _ = launched
    ref = single[case]
    for r in ranks:
        assert torch.equal(r[case]["params"], ranks[0][case]["params"])  # the gathered weights agree on every rank
    got = ranks[0][case]
    diff = _maxdiff(got, ref)
    print(f"{case}: max |Δθ| 2 FSDP ranks vs 1 process = {diff:.3g}; 1 process, other micro-batches: {floor[case]:.3g}")
    assert diff <= max(ATOL, FLOOR_FACTOR * floor[case]) and diff < MAX_DIFF, (diff, floor[case])
    if case != "engine":
        assert got["steps"] == ref["steps"] == STEPS and got["cost"] == ref["cost"]  # filler passes uncounted
        # each rank sampled its share of every call in step with the other (grpo_uneven: shares of 2 and 1 prompts)
        assert (got["sampler"], ref["sampler"]) == ("RankShardedSampler", "HFSampler")
    assert len(got["stats"]) == len(ref["stats"])
    for g, s in zip(got["stats"], ref["stats"]):
        assert g["trained_tokens"] == s["trained_tokens"]
        assert g["loss"] == pytest.approx(s["loss"], rel=1e-5, abs=1e-7)
        assert g["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4, abs=1e-7)
        assert g.get("data_phi", 0.0) == pytest.approx(s.get("data_phi", 0.0), rel=1e-5, abs=1e-6)


def test_autocast_scoring_keeps_every_gradient(launched):
    """The model's split check runs without autocast: casts of gathered weights it made without gradient stayed in
    the enclosing autocast region's cache, and the training pass reusing them lost the layers' gradients."""
    for r in launched[0]:
        assert r["autocast"]["missing"] == [] and r["autocast"]["diff"] < 1e-5, r["autocast"]


def test_checkpoints_and_reset_to_base_under_fsdp(launched):
    ranks = launched[0]
    for r in ranks:
        c = r["checkpoint"]
        assert c["moved"] > 1e-4  # the step did move the weights
        assert 0.45 < c["local_frac"] < 0.55 and c["share"] == 3  # half the weights per rank; shares of 5 padded to 3
        assert c["ckpt_diff"] == 0.0 and c["reset_diff"] == 0.0  # full weights saved; the base copied shard by shard
        assert len(set(c["paths"])) == 1 and c["gone"]  # every rank read rank 0's folder; removed once all were done


def test_rank_zero_evaluates_the_gathered_copy_like_one_process(launched):
    from mlflow import MlflowClient
    from safetensors.torch import load_file
    _, finals, _, _, one, out, uri = launched
    assert finals[1] == {"evaluate": 0, "final": {"steps": 2.0}}
    got = finals[0]["final"]
    assert finals[0]["evaluate"] >= 2 and got["steps"] == one["steps"] == 2  # 2 points (+ the base, uncached)
    for k in [*COMPARED, *(k for k in one if k.startswith("acc/"))]:
        print(f"{k}: 2 FSDP ranks {got[k]:.6g}, 1 process {one[k]:.6g}")
        assert got[k] == pytest.approx(one[k], rel=1e-3, abs=1e-4), k
    for step in (1, 2):  # the checkpoint of record inside an evaluation (step 1) and after the last one (step 2)
        name = f"record-{step:06d}"
        mine, ref = (load_file(out / f"{tag}-{name}" / "model.safetensors") for tag in ("rank0", "one"))
        assert not (out / f"rank1-{name}").exists() and mine.keys() == ref.keys()
        assert max(float((mine[k] - ref[k]).abs().max()) for k in ref) < MAX_DIFF
    client = MlflowClient(tracking_uri=uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("fsdp").experiment_id])
               if r.data.tags["kind"] == "run")
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "pld")}) == [0, 1, 2]


def test_fsdp_with_one_process_is_the_single_process_path(micro_world):
    from harness import distributed
    assert not distributed.initialized()
    plain, sharded = engine_case(), engine_case(parallel="fsdp")
    assert torch.equal(plain["params"], sharded["params"]) and plain["stats"] == sharded["stats"]
    got = train_case(micro_world, "sft", extra=FSDP)
    ref = once(("sft",), lambda: train_case(micro_world, "sft"))  # test_distributed's reference, if computed
    assert torch.equal(got["params"], ref["params"]) and got["stats"] == ref["stats"]
