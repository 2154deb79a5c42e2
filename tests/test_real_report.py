"""`harness report` on every kind of world the harness ships: a real-world sweep (a tiny Qwen2 with a chat template,
gsm8k on local files, and a multiple-choice task of the user's own through include_path) and a micro (toy-kind)
sweep, each reported alone and side by side. A real world has no teacher styles: its report has no off-policy
dial (it crashed on one: KeyError 'label_nll_seq') and assumes no toy-only metric."""
from __future__ import annotations

import pytest
import yaml

from real_fixtures import build_tiny_model, write_task_data

RUNS = {"train": {"max_steps": 2, "eval_every": 2}, "eval": {"bootstrap_iters": 50}}


def _own_task(folder, test_file: str) -> str:
    """A task of our own (lm-eval lacks it): multiple choice over arc_easy-schema rows, with a description."""
    folder.mkdir(parents=True)
    (folder / "own_science.yaml").write_text(yaml.safe_dump({
        "task": "own_science", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": test_file}},
        "test_split": "test", "output_type": "multiple_choice",
        "description": "The following are multiple choice questions about science.\n\n",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices.text}}",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}, sort_keys=False))
    return str(folder)


@pytest.fixture
def sweeps_dir(tmp_path, monkeypatch, micro_world):
    """A project folder with its own MLflow store, and a real-world preset `tiny-own` among the shipped ones."""
    import shutil

    import benchmarks

    data = write_task_data(tmp_path / "data")
    model = build_tiny_model(tmp_path / "qwen2", "qwen2")
    presets = tmp_path / "presets"
    shutil.copytree(benchmarks.PRESET_DIR, presets)
    (presets / "tiny-own.yaml").write_text(yaml.safe_dump({
        "world": {"kind": "real", "base_model": str(model), "chat_template": True,
                  "target": {"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                             "metric": "exact_match", "max_gen_toks": 8},
                  "retention": [{"task": "own_science", "metric": "acc",
                                 "include_path": _own_task(tmp_path / "own", data["arc_easy"]["test"])}],
                  "max_new_tokens": 8, "n_train": 12, "n_heldout": 4, "n_val": 4, "n_eval": 6,
                  "n_val_nontarget": 4, "n_eval_nontarget": 8},
        "train": {"batch_size": 4, "micro_batch_size": 2}, "eval": {"batch_size": 16, "examples_logged": 2},
        "grpo": {"prompts_per_step": 2, "group_size": 2}}))
    monkeypatch.setattr(benchmarks, "PRESET_DIR", presets)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_real_and_micro_sweeps_are_reported_alone_and_side_by_side(sweeps_dir, capsys):
    from harness.cli import main
    from sweeps.driver import run_sweep
    from sweeps.spec import load_spec

    for name, world, methods in (("real-rep", "tiny-own", ["sft", "grpo"]), ("micro-rep", "micro", ["sft"])):
        spec = load_spec(None, [f"world={world}", f"name={name}", "seeds=[0,1]", "trials=1"],
                         methods=methods, overrides=RUNS)
        run_sweep(spec, progress=False)
    capsys.readouterr()

    out = sweeps_dir / "out-real"
    assert main(["report", "--experiment", "real-rep", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "claims (details" in printed and "fig8" not in printed
    figures = sorted(p.stem for p in out.glob("fig*.png"))
    assert figures == ["fig1_gain_drop", "fig2_front_vs_lr", "fig3_pld_drift", "fig4_predictors",
                       "fig5_per_task_drop", "fig6_compute_front", "fig7_matched_gain"]  # no dial: no styles
    summary = (out / "summary.md").read_text()
    assert "world `tiny-own`, target `gsm8k`;" in summary and "teacher style" not in summary.split("\n")[2]
    assert "off-policy dial" not in summary and (out / "report.html").is_file()
    runs = (out / "runs.csv").read_text()
    assert "drop/own_science" in runs.splitlines()[0]  # the user's own task is a retention task of the report

    out = sweeps_dir / "out-micro"
    assert main(["report", "--experiment", "micro-rep", "--out", str(out)]) == 0
    assert (out / "fig8_offpolicy_dial.png").is_file()  # a toy-kind world has teacher styles: the dial is drawn

    out = sweeps_dir / "out-both"
    assert main(["report", "--experiment", "real-rep,micro-rep", "--out", str(out)]) == 0
    table = (out / "crossworld.md").read_text()
    assert "| real-rep | tiny-own | gsm8k |" in table and "| micro-rep | micro |" in table
