"""`harness run --help-config` lists the keys of the world kind the settings select: the toy WorldConfig's for a
toy world, RealWorldConfig's (target, retention items, data files, chat template, ...) for a real preset."""
from __future__ import annotations

import re

import yaml

from harness.cli import main


def _rows(capsys, argv: list[str]) -> tuple[str, dict[str, str]]:
    """(header line, {key: rest of its row}) of one --help-config print."""
    assert main(["run", *argv, "--help-config"]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    rows = {m.group(1): m.group(2) for line in lines if (m := re.match(r"  (\S+)\s+(.*)$", line))}
    return head, rows


def test_toy_world_shows_toy_keys(capsys):
    head, rows = _rows(capsys, ["--world", "micro"])
    assert "world kind `toy`" in head
    assert rows["world.teacher_style"].startswith("'worked'") and "world.model.hidden_size" in rows
    assert not any(k.startswith(("world.target.", "world.retention")) for k in rows)


def test_real_preset_shows_real_keys_with_their_docs(capsys, tmp_path):
    from benchmarks.lmeval_tasks import TaskSource
    from benchmarks.real import RealWorldConfig, TargetSource

    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({"world": {"kind": "real", "base_model": str(tmp_path / "model"),
                                                "target": {"task": "gsm8k"}, "retention": [{"task": "arc_easy"}]}}))
    for argv in (["--preset", str(preset)], ["--world", "rbd-llama3.2-1b-ifeval"]):
        head, rows = _rows(capsys, argv)
        assert "world kind `real`" in head
        assert "world.teacher_style" not in rows and "world.model.hidden_size" not in rows
        first_doc_line = {k: (d or "").strip().splitlines()[0] for k, d in
                          [(f"world.{n}", f.description) for n, f in RealWorldConfig.model_fields.items()]
                          + [(f"world.target.{n}", f.description) for n, f in TargetSource.model_fields.items()]
                          + [(f"world.retention[].{n}", f.description) for n, f in TaskSource.model_fields.items()]}
        for key in ("world.target.task", "world.retention", "world.retention[].task", "world.target.data_files",
                    "world.retention[].data_files", "world.chat_template", "world.system_prompt",
                    "world.target.include_path", "world.retention[].include_path", "world.target.label_field",
                    "world.target.train_file", "world.target.max_gen_toks", "world.max_new_tokens", "world.n_heldout"):
            assert first_doc_line[key] in rows[key], key  # the key is listed with its own documentation
        assert rows["world.target.task"].startswith("(required)") and rows["world.chat_template"].startswith("True")
        assert any(k.startswith("sft.") for k in rows)  # the method's own section follows
