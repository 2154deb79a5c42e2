"""Every bad input, on toy/micro commands and on a real world built from the tests' tiny models: exit code 2, one
line on stderr naming the problem (YAML's own parse position may add lines), no traceback, and the MLflow store
byte for byte as it was. The table runs the real CLI in-process (`harness.cli.main`)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from real_fixtures import build_tiny_model, write_punkt_tab, write_task_data

SIZES = {"n_train": 12, "n_heldout": 4, "n_val": 4, "n_eval": 6, "n_val_nontarget": 4, "n_eval_nontarget": 6}


def _world(model: str, data: dict) -> dict:
    """The tiny real world: Qwen2 with a chat template, local gsm8k / arc_easy / ifeval."""
    return {"kind": "real", "name": "tiny-bad", "base_model": model, "chat_template": True,
            "target": {"task": "gsm8k", "data_files": data["gsm8k"], "filter": "flexible-extract",
                       "metric": "exact_match", "max_gen_toks": 12},
            "retention": [{"task": "arc_easy", "data_files": data["arc_easy"], "metric": "acc"},
                          {"task": "ifeval", "data_files": data["ifeval"], "metric": "prompt_level_strict_acc",
                           "max_gen_toks": 12}],
            "max_new_tokens": 10, **SIZES}


def _deep(d: dict, path: str, value) -> dict:
    """A deep copy of `d` with the dotted key (list indices as numbers) set to `value`."""
    d = json.loads(json.dumps(d))
    *head, last = path.split(".")
    node = d
    for k in head:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Everything the rows point at: a store with one experiment, the tiny real world and its broken variants."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("bad")
    data = write_task_data(root / "data")
    model = build_tiny_model(root / "qwen2", "qwen2")
    store = root / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("existing")
    (root / "afile").write_text("a file, not a folder\n")
    (root / "bad.yaml").write_text("train: {max_steps: 3\n")                      # unclosed flow mapping
    (root / "list.yaml").write_text("- just\n- a list\n")
    (root / "spec-extra.yaml").write_text("world: micro\ntrails: 3\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "corrupt.db").write_bytes(b"this is not a sqlite database" * 40)

    # A model folder without tokenizer files; a tokenizer without a chat template.
    (notok := root / "no-tokenizer").mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(model / f, notok / f)
    strict = root / "no-system-turn"  # a template that refuses a system turn, as Gemma's does
    shutil.copytree(model, strict)
    cfg = json.loads((strict / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                            "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (strict / "chat_template.jinja").unlink(missing_ok=True)
    (strict / "tokenizer_config.json").write_text(json.dumps(cfg))
    nochat = root / "no-chat-template"
    shutil.copytree(model, nochat)
    (nochat / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((nochat / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (nochat / "tokenizer_config.json").write_text(json.dumps(cfg))

    # Data in the wrong schema: gsm8k's test file with `q` for `question`; arc_easy rows with no choices.
    rows = [json.loads(x) for x in open(data["gsm8k"]["test"])]
    (root / "gsm8k_q.jsonl").write_text("".join(json.dumps({"q": r["question"], "answer": r["answer"]}) + "\n"
                                                for r in rows))
    arc = [json.loads(x) for x in open(data["arc_easy"]["test"])]
    (root / "arc_nochoices.jsonl").write_text("".join(json.dumps({"id": r["id"], "question": r["question"],
                                                                  "answerKey": r["answerKey"]}) + "\n" for r in arc))
    (root / "train_notjson.jsonl").write_text("{not json at all\n")
    (root / "gsm8k_q_train.jsonl").write_text((root / "gsm8k_q.jsonl").read_text())
    ifeval = [json.loads(x) for x in open(data["ifeval"]["train"])]
    (root / "ifeval_bare.jsonl").write_text("".join(json.dumps({"key": r["key"], "prompt": r["prompt"]}) + "\n"
                                                    for r in ifeval))
    # An include_path folder whose task YAML has a syntax error.
    (tasks := root / "my_tasks").mkdir()
    (tasks / "my_broken_task.yaml").write_text("task: my_broken_task\ndataset_path: json\n  output_type: [oops\n")

    world = _world(str(model), data)
    base = {"world": world, "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "eval_every": 1},
            "eval": {"batch_size": 16, "bootstrap_iters": 0}, "tracking": {"experiment": "real-bad"}}
    variants = {
        "good": base,
        "no_tokenizer": _deep(base, "world.base_model", str(notok)),
        "no_chat_template": _deep(base, "world.base_model", str(nochat)),
        "system_refused": _deep(_deep(base, "world.base_model", str(strict)), "world.system_prompt", "Be brief."),
        "wrong_schema_target": _deep(base, "world.target.data_files.test", str(root / "gsm8k_q.jsonl")),
        "wrong_schema_retention": _deep(base, "world.retention.0.data_files.test", str(root / "arc_nochoices.jsonl")),
        "wrong_schema_all": _deep(base, "world.target.data_files", {"train": str(root / "gsm8k_q_train.jsonl"),
                                                                     "test": str(root / "gsm8k_q.jsonl")}),
        "data_not_json": _deep(base, "world.target.data_files.test", str(root / "train_notjson.jsonl")),
        "ifeval_no_checks": _deep(base, "world.retention.1.data_files.train", str(root / "ifeval_bare.jsonl")),
        "train_file_not_json": _deep(base, "world.target.train_file", str(root / "train_notjson.jsonl")),
        "broken_include": _deep(base, "world.retention.1", {"task": "my_broken_task", "include_path": str(tasks)}),
        "mc_target": _deep(_deep(base, "world.target", {"task": "arc_easy", "data_files": data["arc_easy"],
                                                         "metric": "acc"}),
                           "world.retention.0", {"task": "gsm8k", "data_files": data["gsm8k"]}),
        "long_gen": _deep(base, "world.retention.1.max_gen_toks", 5000),
        "long_rollout": _deep(base, "world.max_new_tokens", 5000),
        "hub_dataset": _deep(base, "world.retention.0", {"task": "arc_easy", "metric": "acc"}),
        "missing_data": _deep(base, "world.retention.0.data_files.test", str(root / "nope.jsonl")),
        "no_model": _deep(base, "world.base_model", str(root / "no-such-model")),
        "small_data": _deep(base, "world.n_eval", 500),
        "unknown_kind": _deep(base, "world.kind", "rael"),
    }
    for name, preset in variants.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(preset))
    nltk_dir = write_punkt_tab(root / "nltk")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("HF_HOME", str(root / "hf"))                     # an empty hub cache
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf" / "datasets"))
        mp.setenv("NLTK_DATA", str(nltk_dir))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)                                            # an optuna journal or report would land here
        yield root


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file of the store and the working folder (cache and nltk data aside)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("cache/", "hf/")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# (id, argv, message fragment); `{root}` is the fixture's folder, `@name` a preset of `env`'s variants.
ROWS = [
    # --- list
    ("list-extra", ["list", "extra"], "takes no 'extra'"),
    ("list-flag", ["list", "--bogus"], "has no option --bogus"),
    # --- run on the micro world
    ("run-unknown-world", ["run", "--world", "mikro"], "Did you mean 'micro'"),
    ("run-unknown-method", ["run", "--world", "micro", "--method", "grp0"], "Did you mean 'grpo'"),
    ("run-unknown-key", ["run", "--world", "micro", "train.lrr=1e-4"], "lrr"),
    ("run-bad-number", ["run", "--world", "micro", "train.lr=fast"], "train.lr"),
    ("run-negative-steps", ["run", "--world", "micro", "train.max_steps=-3"], "max_steps"),
    ("run-two-seeds", ["run", "--world", "micro", "seeds=0,1"], "takes one seed"),
    ("run-seed-disagree", ["run", "--world", "micro", "--seed", "1", "train.seed=2"], "disagree"),
    ("run-no-device", ["run", "--world", "micro", "train.device=cuda:7"], "train.device"),
    ("run-not-a-device", ["run", "--world", "micro", "train.device=tpu9"], "train.device"),
    ("run-precision", ["run", "--world", "micro", "train.precision=fp8"], "precision"),
    ("run-missing-preset", ["run", "--preset", "{root}/nope.yaml"], "nope.yaml"),
    ("run-malformed-preset", ["run", "--preset", "{root}/bad.yaml"], "bad.yaml"),
    ("run-preset-not-mapping", ["run", "--preset", "{root}/list.yaml"], "list.yaml"),
    ("run-preset-is-folder", ["run", "--preset", "{root}/store"], "is a folder"),
    ("run-preset-binary", ["run", "--preset", "{root}/binary.yaml"], "not a text file"),
    ("run-unknown-flag", ["run", "--wrld", "micro"], "has no option --wrld"),
    ("run-unknown-target", ["run", "--world", "micro", "world.target=revv"], "Did you mean 'rev'"),
    # --- sweep
    ("sweep-zero-workers", ["sweep", "--world", "micro", "--workers", "0"], "workers must be at least 1"),
    ("sweep-negative-workers", ["sweep", "workers=-2"], "workers must be at least 1"),
    ("sweep-empty-methods", ["sweep", "--world", "micro", "--methods", ","], "methods is empty"),
    ("sweep-duplicate-methods", ["sweep", "--methods", "sft,grpo,sft"], "'sft' twice"),
    ("sweep-unknown-method", ["sweep", "--world", "micro", "--methods", "sft,grpp"], "Did you mean 'grpo'"),
    ("sweep-zero-trials", ["sweep", "--trials", "0"], "trials must be at least 1"),
    ("sweep-float-trials", ["sweep", "trials=2.5"], "takes an integer"),
    ("sweep-negative-seed", ["sweep", "--seeds", "0,-1"], "seeds takes integers >= 0"),
    ("sweep-duplicate-seeds", ["sweep", "--seeds", "1,1"], "'1' twice"),
    ("sweep-empty-seeds", ["sweep", "seeds=[]"], "seeds is empty"),
    ("sweep-nan-budget", ["sweep", "--world", "micro", "budget=.nan"], "budget"),
    ("sweep-bad-objective", ["sweep", "--world", "micro", "objective=fastest"], "objective"),
    ("sweep-missing-spec", ["sweep", "--spec", "{root}/nope.yaml"], "nope.yaml"),
    ("sweep-malformed-spec", ["sweep", "--spec", "{root}/bad.yaml"], "bad.yaml"),
    ("sweep-spec-is-folder", ["sweep", "--spec", "{root}/store"], "is a folder"),
    ("sweep-preset-binary", ["sweep", "--preset", "{root}/binary.yaml"], "not a text file"),
    ("sweep-spec-typo", ["sweep", "--spec", "{root}/spec-extra.yaml"], "Did you mean 'trials'"),
    ("sweep-unknown-world", ["sweep", "--world", "mikro", "trials=1"], "Did you mean 'micro'"),
    ("sweep-disagree", ["sweep", "--world", "micro", "world=toy"], "disagree"),
    # --- report
    ("report-out-under-file", ["report", "--out", "{root}/afile/x"], "is a file"),
    ("report-out-is-file", ["report", "--out", "{root}/afile"], "is a file, not a folder"),
    ("report-unknown-setting", ["report", "colour=red"], "unknown setting 'colour=red'"),
    ("report-unknown-experiment", ["report", "--experiment", "existng"], "existng"),
    ("report-empty-list", ["report", "--experiment", ","], "experiment is empty"),
    ("report-list-twice", ["report", "experiment=existing,existing"], "'existing' twice"),
    # --- ui
    ("ui-port-zero", ["ui", "--port", "0"], "port must be between 1 and 65535"),
    ("ui-port-high", ["ui", "port=70000"], "port must be between 1 and 65535"),
    ("ui-port-word", ["ui", "port=x"], "port"),
    ("ui-unknown-setting", ["ui", "colour=red"], "unknown setting"),
    ("ui-unknown-experiment", ["ui", "--experiment", "existng", "--no-browser"], "existng"),
    # --- fetch
    ("fetch-nothing", ["fetch"], "needs --world"),
    ("fetch-unknown-world", ["fetch", "--world", "rbd-qwen2.5-1.5b-ifevl"], "Did you mean"),
    # --- the real world built from the tests' tiny models
    ("real-no-tokenizer", ["run", "--preset", "@no_tokenizer"], "no tokenizer files"),
    ("real-no-tokenizer-dry", ["run", "--preset", "@no_tokenizer", "--dry-run"], "no tokenizer files"),
    ("real-no-chat-template", ["run", "--preset", "@no_chat_template"], "no chat template"),
    ("real-no-chat-template-dry", ["run", "--preset", "@no_chat_template", "--dry-run"], "no chat template"),
    ("real-system-turn-refused", ["run", "--preset", "@system_refused"], "System role not supported"),
    ("real-system-turn-refused-dry", ["run", "--preset", "@system_refused", "--dry-run"], "drop world.system_prompt"),
    ("real-wrong-schema-target", ["run", "--preset", "@wrong_schema_target", "--dry-run"],
     "gsm8k_q.jsonl' (gsm8k test) lacks field(s) question"),
    ("real-wrong-schema-target-run", ["run", "--preset", "@wrong_schema_target"], "gsm8k_q.jsonl"),
    ("real-wrong-schema-retention", ["run", "--preset", "@wrong_schema_retention", "--dry-run"],
     "arc_nochoices.jsonl' (arc_easy test) lacks field(s) choices"),
    ("real-wrong-schema-all", ["run", "--preset", "@wrong_schema_all", "--dry-run"], "lacks field(s) question"),
    ("real-data-not-json", ["run", "--preset", "@data_not_json"], "line 1 is not a JSON object"),
    ("real-ifeval-no-checks", ["run", "--preset", "@ifeval_no_checks", "--dry-run"], "ifeval_bare.jsonl"),
    ("real-train-file-not-json", ["run", "--preset", "@train_file_not_json", "--dry-run"], "train_notjson.jsonl"),
    ("real-broken-include", ["run", "--preset", "@broken_include", "--dry-run"], "my_broken_task.yaml"),
    ("real-mc-target-grpo", ["run", "--preset", "@mc_target", "--method", "grpo"], "no reward"),
    ("real-mc-target-grpo-dry", ["run", "--preset", "@mc_target", "--method", "trapo", "--dry-run"], "no reward"),
    ("real-mc-target-sweep", ["sweep", "--preset", "@mc_target", "--methods", "sft,grpo", "trials=1"], "no reward"),
    ("real-long-gen", ["run", "--preset", "@long_gen", "--dry-run"], "world.retention[1].max_gen_toks"),
    ("real-long-rollout", ["run", "--preset", "@long_rollout", "--dry-run"], "world.max_new_tokens"),
    ("real-hub-dataset", ["run", "--preset", "@hub_dataset", "--dry-run"], "hub dataset allenai/ai2_arc"),
    ("real-missing-data", ["run", "--preset", "@missing_data", "--dry-run"], "nope.jsonl"),
    ("real-no-model", ["run", "--preset", "@no_model"], "does not exist"),
    ("real-small-data", ["run", "--preset", "@small_data"], "asks for"),
    ("real-unknown-world-kind", ["run", "--preset", "@unknown_kind"], "Did you mean 'real'"),
    ("real-unknown-world-kind-sweep", ["sweep", "--preset", "@unknown_kind", "--methods", "sft", "trials=1"],
     "Did you mean 'real'"),
    ("real-unknown-task", ["run", "--preset", "@good", "world.target.task=gsm8kk"], "Did you mean"),
    ("real-unknown-metric", ["run", "--preset", "@good", "world.target.metric=acc"], "lm-eval metric"),
    ("real-no-nltk", ["run", "--preset", "@good", "--dry-run", "NLTK_DATA"], "punkt_tab"),
    ("real-shipped-preset-dry", ["run", "--world", "rbd-qwen2.5-1.5b-ifeval", "--dry-run"], "not ready"),
    ("real-fetch-local-no-tokenizer", ["fetch", "--preset", "@no_tokenizer"], "no tokenizer files"),
    ("real-fetch-local-missing-data", ["fetch", "--preset", "@missing_data"], "nope.jsonl"),
    ("real-fetch-offline", ["fetch", "--world", "tms-qwen2.5-1.5b-math", "OFFLINE"], "could not download"),
    ("real-fetch-rebuild-base", ["fetch", "--world", "tms-qwen2.5-1.5b-math", "--rebuild-base"],
     "--rebuild-base is for toy worlds"),
]


def _argv(argv: list[str], root: Path) -> list[str]:
    return [str(root / f"{a[1:]}.yaml") if a.startswith("@") else a.replace("{root}", str(root)) for a in argv]


@pytest.mark.parametrize("argv, message", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, argv, message, capsys, monkeypatch):
    argv = _argv(argv, env)
    if "NLTK_DATA" in argv:  # nltk data missing: an empty NLTK_DATA, and no folder remembered from earlier rows
        import nltk
        argv.remove("NLTK_DATA")
        (empty := env / "cache" / "empty-nltk").mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("NLTK_DATA", str(empty))
        monkeypatch.setattr(nltk.data, "path", [str(empty)])
    if "OFFLINE" in argv:  # no network: huggingface_hub's own error, as snapshot_download raises it offline
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
        argv.remove("OFFLINE")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # CI sets them: this row is the unset, no-network case
            monkeypatch.delenv(var, raising=False)

        def offline(*a, **k):
            raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub, and we "
                                          "cannot find the appropriate snapshot folder.\nPlease check your connection.")
        monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    before = _snapshot(env)
    from harness.cli import main
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("harness: error:"), err
    assert len(err.splitlines()) == 1 or "not valid YAML" in err.splitlines()[0], err  # + YAML's parse position
    assert message in err, err
    assert _snapshot(env) == before   # no run, no experiment, no journal, no report


@pytest.mark.parametrize("uri, message", [("sqlite:///{root}/corrupt.db", "cannot read the MLflow store"),
                                         ("sqlite:///{root}/none.db", "no MLflow store"),
                                         ("{root}/no-such-folder", "no MLflow store")],
                         ids=["corrupt", "missing", "missing-folder"])
@pytest.mark.parametrize("command", [["report"], ["ui", "--no-browser"]])
def test_unreadable_stores_are_one_line(env, uri, message, command, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("{root}", str(env)))
    before = _snapshot(env)
    from harness.cli import main
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert _snapshot(env) == before


def test_a_ready_dry_run_is_followed_by_a_run_that_gets_past_loading(env, capsys):
    """What `--dry-run` calls ready loads in the run too: the run trains its step and finishes."""
    from harness.cli import main

    good = str(env / "good.yaml")
    assert main(["run", "--preset", good, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ready: 12 training items" in out and "ok       tokenizer and chat template" in out
    assert main(["run", "--preset", good, "--method", "sft", "--quiet"]) == 0
    assert "sft on tiny-bad/gsm8k" in capsys.readouterr().out


def test_a_locked_store_is_one_line(env, capsys):
    """A store another process holds an exclusive lock on: one line after sqlite's wait, nothing changed."""
    import sqlite3

    from harness.cli import main
    before = _snapshot(env)
    lock = sqlite3.connect(env / "store" / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        assert main(["ui", "--no-browser"]) == 2
    finally:
        lock.rollback()
        lock.close()
    err = capsys.readouterr().err.strip()
    assert "database is locked" in err and len(err.splitlines()) == 1, err
    assert _snapshot(env) == before


def test_dry_run_counts_a_staged_hub_dataset_as_present(env, monkeypatch):
    """The hub-dataset row turns ok once the dataset is in the datasets cache (where `harness fetch` puts it)."""
    import datasets.config

    from benchmarks.staging import requirements
    from harness.config import resolve_config
    cfg = resolve_config(preset=env / "hub_dataset.yaml")
    rows = {r.what: r for r in requirements(cfg.world)}
    assert rows["arc_easy data"].present is False and "allenai/ai2_arc" in rows["arc_easy data"].where
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", env / "cache" / "datasets")
    (env / "cache" / "datasets" / "allenai___ai2_arc").mkdir(parents=True)
    rows = {r.what: r for r in requirements(cfg.world)}
    assert rows["arc_easy data"].present is True and rows["tokenizer and chat template"].present is True
