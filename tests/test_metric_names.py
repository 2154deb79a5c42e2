"""The logged metric names are defined once (harness.metric_names) and never renamed: stores and reports of earlier
runs are read by them. The literals below are the contract; the walk checks no source module spells one itself."""
from __future__ import annotations

import io
import tokenize
from pathlib import Path

from harness import metric_names as N

ROOT = Path(__file__).resolve().parent.parent


def test_the_logged_names_are_the_ones_earlier_runs_hold():
    assert (N.TARGET_GAIN, N.NONTARGET_DROP, N.PLD, N.PLD_DRIFT, N.PLD_RISE, N.KL_TO_BASE) == (
        "target_gain", "nontarget_drop", "pld", "pld_drift", "pld_rise", "kl_to_base")
    assert N.GAIN_DROP_CIS == ("target_gain", "target_gain_lo", "target_gain_hi",
                               "nontarget_drop", "nontarget_drop_lo", "nontarget_drop_hi")
    assert (N.VAL_TARGET_GAIN, N.VAL_NONTARGET_DROP) == ("val/target_gain", "val/nontarget_drop")
    assert (N.acc("shift"), N.drop("shift"), N.VAL + N.acc("shift")) == ("acc/shift", "drop/shift", "val/acc/shift")
    assert N.DATA_PHI == "train/data_phi" and N.COST_FLOPS == "cost/flops"
    assert N.COST_SECONDS == ("cost/train_s", "cost/gen_s", "cost/eval_s", "cost/wall_s")
    assert (N.COST_TRAIN_TOKENS, N.COST_GEN_TOKENS) == ("cost/train_tokens", "cost/gen_tokens")
    assert (N.BASE_LABEL_NLL_TOKEN, N.BASE_LABEL_NLL_SEQ, N.BASE_OWN_NLL_TOKEN, N.BASE_OWN_NLL_SEQ) == (
        "base/label_nll_token", "base/label_nll_seq", "base/own_nll_token", "base/own_nll_seq")
    assert (N.RECORD + N.acc("shift"), N.RECORD_AGREEMENT) == ("record/acc/shift", "record/agreement")
    assert (N.TRIAL_VAL_TARGET_GAIN, N.TRIAL_VAL_NONTARGET_DROP) == ("val_target_gain", "val_nontarget_drop")


def _spelled_names(path: Path, names: set[str], root: Path = ROOT) -> list[tuple[str, str]]:
    """(file, literal) of each plain string literal in `path` that is exactly one of `names` (docstrings and
    f-strings aside)."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        s = tok.string
        if tok.type == tokenize.STRING and s[:1] in "\"'" and not s.startswith(('"""', "'''")) and s[1:-1] in names:
            found.append((path.relative_to(root).as_posix(), s[1:-1]))
    return found


# Strings equal to a metric name that are not one: harness.metrics' function kl_to_base, patched by attribute name.
NOT_METRICS = {("harness/bench/run_costs.py", "kl_to_base")}


def test_no_module_spells_a_metric_name_itself():
    names = {v for k, v in vars(N).items() if k.isupper() and isinstance(v, str) and len(v) > 4}
    names |= set(N.GAIN_DROP_CIS)
    found = [hit for pkg in ("harness", "methods", "benchmarks", "sweeps", "reports")
             for path in sorted((ROOT / pkg).rglob("*.py")) if path.name != "metric_names.py"
             for hit in _spelled_names(path, names) if hit not in NOT_METRICS]
    assert not found, "import these from harness.metric_names instead: " + ", ".join(f"{f}: {n!r}" for f, n in found)


def test_the_walk_finds_a_spelled_name(tmp_path: Path):
    """Guard against a walk that can find nothing: a key is found, a docstring is not."""
    (tmp_path / "m.py").write_text('x = {"target_gain": 1}\n"""target_gain"""\ny = f"{x}target_gain"\n')
    assert _spelled_names(tmp_path / "m.py", {"target_gain"}, tmp_path) == [("m.py", "target_gain")]
