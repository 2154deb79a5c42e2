"""`python -m harness.bench.gpu_check --device cpu --backend hf` end to end with tiny settings (its CPU smoke run)."""
from __future__ import annotations

import pytest

from harness.bench import gpu_check
from harness.method import method_names

TINY = ["--device", "cpu", "--backend", "hf", "--steps", "1", "--grpo", "4", "2", "--bulk", "8", "1",
        "--prompt-len", "12", "--max-new-tokens", "3", "--mfu", "2", "2", "16"]


def rows_of(out: str) -> dict[str, list[str]]:
    """check -> [result, figure, goal] from the printed table (columns split on runs of 2+ spaces)."""
    import re
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("check"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def test_cpu_hf_smoke_run_passes_and_prints_every_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert gpu_check.main(TINY) == 0
    captured = capsys.readouterr()
    out = captured.out
    rows = rows_of(out)
    for check in rows:  # each row was printed the moment it was measured too (all but the table's own first row)
        assert check == "model" or f"measured: {check} | {rows[check][0]}" in captured.err
    assert out.splitlines()[0].split() == ["check", "result", "figure", "goal"]
    assert len(method_names()) == 8
    for m in method_names():  # every method took its step through harness.run.run
        result, figure, goal = rows[f"train {m}"]
        assert result == "ok" and figure.startswith("1 steps in ") and goal == "1 steps, finite metrics"
    assert rows["train tokens/s"][0] == "ok" and rows["MFU"][0] == "n/a"
    assert rows["sample hf grpo 4x2"][0] == "ok" and rows["sample hf bulk 8x1"][0] == "ok"
    assert rows["vllm/hf grpo"] == ["skip", "—", "≥ 6x HF"] and rows["vllm/hf bulk"] == ["skip", "—", "≥ 20x HF"]
    # the paths real use runs: what could not run here says why, and fails nothing
    assert rows["push key after AdamW step"][:2] == ["ok", "foreach AdamW step changed the key"]
    assert rows["push vllm after AdamW step"][0] == rows["sleep -> train -> wake"][0] == "not installed"
    result, figure, _ = rows["record eval hf"]
    assert result == "ok" and figure.startswith("22 docs in ")  # IFEval val 4 + eval 8, ARC-Easy val 4 + eval 6
    assert rows["two ranks (nccl)"][:2] == ["not run", "needs --device cuda"]
    assert "tok/s" in rows["sample hf grpo 4x2"][1]
    assert "FAIL" not in out and "rows without failure" in out


def test_goals_and_usage_errors(capsys):
    assert gpu_check.peak_flops("cpu") == (None, "cpu")
    assert gpu_check.main(["--device", "cpu", "--model", "/no/such/model"]) == 2
    assert "is not a save_pretrained folder" in capsys.readouterr().err
    if not gpu_check.torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H200", 989e12)])
def test_peak_table_matches_device_names(monkeypatch, name, peak):
    monkeypatch.setattr(gpu_check.torch.cuda, "get_device_name", lambda *a: name)
    assert gpu_check.peak_flops("cuda") == (peak, name)


def test_table_aligns_columns():
    text = gpu_check.table([("a", "ok", "1 seq/s", "—"), ("longer check", "FAIL", "x", "≥ 6x HF")])
    head, rule, *body = text.splitlines()
    assert head.index("result") == body[0].index("ok") == body[1].index("FAIL")


def test_shape_builds_a_random_model_of_that_size_and_checks_select(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "SHAPES", {"mini": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                                           num_attention_heads=4, num_key_value_heads=2)})
    assert gpu_check.main(["--device", "cpu", "--shape", "mini", "--checks", "speed", "--steps", "1",
                           "--mfu", "2", "2", "8"]) == 0
    rows = rows_of(capsys.readouterr().out)
    assert set(rows) == {"model", "train tokens/s", "MFU"} and rows["model"][1].startswith("random mini shape")
    # per layer: q, o 256x256 (+ q bias); k, v 256x128 (GQA: 2 of 4 heads; + biases); MLP 3 x 256x512; two norms
    layer = 2 * 256 * 256 + 256 + 2 * (256 * 128 + 128) + 3 * 256 * 512 + 2 * 256
    vocab = int(rows["train tokens/s"][1].split("vocab ")[1].split(")")[0])
    assert f"({(2 * layer + 256 + vocab * 256) / 1e6:,.1f}M params, 2x8" in rows["train tokens/s"][1]
    assert gpu_check.main(["--device", "cpu", "--shape", "mini", "--checks", "speed", "--steps", "1", "--mfu", "2", "2",
                           "8", "--train", "train.fused_adamw=true"]) == 0
    assert rows_of(capsys.readouterr().out)["train tokens/s"][1].endswith("vocab 566, fused_adamw=True)")
    assert gpu_check.main(["--device", "cpu", "--checks", "train,bogus"]) == 2
    assert gpu_check.main(["--device", "cpu", "--train", "train.no_such=1"]) == 2
    assert gpu_check.main(["--device", "cpu", "--train", "eval.batch_size=1"]) == 2
    assert gpu_check.main(["--device", "cpu", "--model", str(tmp_path), "--shape", "mini"]) == 2


def test_the_first_compile_gets_a_budget_and_its_time_is_a_row(tmp_path, monkeypatch):
    import time

    from harness.engine import Trainer
    from harness.tiny import build_tiny_model
    model = str(build_tiny_model(tmp_path / "m", "qwen2"))
    real, calls = Trainer.update, []

    def slow_first(self, *a, **kw):  # the warm-up step stands in for a first compile that takes 3 s
        calls.append(1)
        if len(calls) == 1:
            time.sleep(3)
        return real(self, *a, **kw)
    monkeypatch.setattr(Trainer, "update", slow_first)
    monkeypatch.setattr("harness.engine.compile_scoring", lambda model: None)  # the stand-in above is the compile
    rows = {r[0]: r[1:] for r in gpu_check.train_speed(model, "cpu", 2, 2, 8, 1, {"compile": True}, 1)}
    assert rows == {"train compile": ("FAIL", "first compile not done within 1 s", "≤ 1 s")}
    calls.clear()
    rows = {r[0]: r[1:] for r in gpu_check.train_speed(model, "cpu", 2, 2, 8, 1, {"compile": True}, 60)}
    result, figure, goal = rows["train compile"]
    assert result == "ok" and float(figure.split()[-2]) >= 3 and goal == "≤ 60 s" and "train tokens/s" in rows
