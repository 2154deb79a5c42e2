"""`harness report` from a temporary MLflow store of synthetic runs (no training): Pareto sets, drop at matched
gain and predictor fits against hand-computed values, every file written, artifacts on the parent runs, and the
HTML page rendering in headless Chromium with every image loaded and no network."""
from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from reports.pareto import front_order, gain_grid, linear_fit, nice_step, pareto_mask

# ---------------------------------------------------------------- the pure helpers, on hand-built points


def test_pareto_dominated_points_are_dropped():
    gain = [5, 10, 20, 30]
    drop = [0.5, 1, 5, 3]          # (20, 5) is dominated by (30, 3)
    assert pareto_mask(gain, drop).tolist() == [True, True, False, True]
    assert front_order(gain, drop).tolist() == [0, 1, 3]


def test_pareto_ties_and_equal_coordinates():
    # identical points: both kept; equal gain, higher drop: dominated; equal drop, lower gain: dominated
    gain = [15, 15, 10, 10, 25, 5]
    drop = [4, 4, 0, 2, 6, 0]
    assert pareto_mask(gain, drop).tolist() == [True, True, True, False, True, False]
    assert pareto_mask([1, 1], [2, 2]).tolist() == [True, True]


def test_pareto_single_empty_and_nan():
    assert pareto_mask([3.0], [7.0]).tolist() == [True]
    assert pareto_mask([], []).tolist() == []
    # a NaN point is never on the front and never dominates: (50, nan) must not hide (10, 1)
    assert pareto_mask([50, 10, np.nan, 5], [np.nan, 1, 0, 2]).tolist() == [False, True, False, False]
    assert pareto_mask([np.nan], [np.nan]).tolist() == [False]
    with pytest.raises(ValueError):
        pareto_mask([1, 2], [1])


def test_pareto_matches_brute_force():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 6, 200).astype(float)   # many ties on purpose
    d = rng.integers(0, 6, 200).astype(float)
    brute = [not any((g[j] >= g[i] and d[j] <= d[i]) and (g[j] > g[i] or d[j] < d[i]) for j in range(200))
             for i in range(200)]
    assert pareto_mask(g, d).tolist() == brute


def test_gain_grid():
    assert nice_step(40, 8) == 5 and nice_step(68, 8) == 10 and nice_step(0.3, 14) == pytest.approx(0.025)
    assert gain_grid(40, 8).tolist() == [5, 10, 15, 20, 25, 30, 35, 40]
    assert gain_grid(-3).tolist() == [] and gain_grid(float("nan")).tolist() == []


def test_linear_fit_hand_values():
    # x = 1..5, y = 1,3,2,5,4: Σdxdy = 8, Σdx² = Σdy² = 10, so r = 0.8, R² = 0.64, slope 0.8, intercept 0.6
    fit = linear_fit([1, 2, 3, 4, 5, np.nan], [1, 3, 2, 5, 4, 7])
    assert fit["r"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(0.64)
    assert fit["slope"] == pytest.approx(0.8) and fit["intercept"] == pytest.approx(0.6) and fit["n"] == 5
    assert math.isnan(linear_fit([1, 2], [1, 2])["r2"])          # too few points
    assert math.isnan(linear_fit([1, 1, 1], [1, 2, 3])["r"])     # constant x


def test_method_styles_follow_the_registry_order():
    from reports.figures import method_styles
    a = method_styles(["sft", "grpo"], ["grpo"])
    b = method_styles(["sft", "grpo"], ["sft", "grpo", "zz_new"])
    assert a["grpo"] == {k: v for k, v in b["grpo"].items()}          # same style whoever else is present
    assert [m for m in sorted(b, key=lambda m: b[m]["rank"])] == ["sft", "grpo", "zz_new"]
    assert len({s["color"] for s in b.values()}) == 3 and b["zz_new"]["label"] == "zz_new"


# ---------------------------------------------------------------- a synthetic sweep in a temporary store

# (method, lr, parent?, checkpoints [(step, gain, drop)], final kl): hand-built so that
#   fronts: sft {(5,.5), (10,1), (30,3)}; grpo {(25,0), (40,5)}; zz_custom both tied (15,4) points
#   final (kl, drop) pairs: (1,1) (2,3) (3,2) (4,5) (5,4)  ->  r = 0.8, R² = 0.64 for KL against drop
RUNS = [
    ("sft", 1e-5, True, [(10, 5, 0.5), (20, 10, 1)], 1.0),
    ("sft", 1e-4, True, [(10, 20, 5), (20, 30, 3)], 2.0),
    ("grpo", 1e-5, True, [(10, 10, 0), (20, 10, 2)], 3.0),
    ("grpo", 1e-4, True, [(10, 25, 0), (20, 40, 5)], 4.0),
    ("zz_custom", 1e-4, False, [(10, 15, 4), (20, 15, 4)], 5.0),   # a method no registry knows, no parent run
]
EXPECTED_FRONT = [("sft", 5, 0.5), ("sft", 10, 1), ("sft", 30, 3), ("grpo", 25, 0), ("grpo", 40, 5),
                  ("zz_custom", 15, 4)]   # the two tied zz_custom points are listed once, the cheaper (step 10)
TASKS = ("add", "rev")
PHI = {"sft": -5.0, "grpo": 0.0, "zz_custom": -1.0}


def _fill(client: MlflowClient, exp_id: str) -> dict[str, str]:
    """Log the synthetic sweep; returns {method: parent run id}."""
    parents = {}
    for method in ("sft", "grpo"):
        parents[method] = client.create_run(exp_id, run_name=f"synth-{method}", tags={
            "kind": "parent", "sweep": "synth", "method": method}).info.run_id
        client.set_terminated(parents[method], "FINISHED")
    base = client.create_run(exp_id, run_name="base", tags={"kind": "base", "world": "toy"}).info.run_id
    client.log_batch(base, metrics=[Metric("acc/sort", 32.0, 0, 0), Metric("pld", 3.0, 0, 0)])
    client.set_terminated(base, "FINISHED")
    for trial, (method, lr, has_parent, points, kl) in enumerate(RUNS):
        tags = {"kind": "run", "method": method, "seed": "0", "target": "sort", "teacher_style": "worked",
                "world": "toy", "sweep": "synth", "trial": str(trial)}
        if has_parent:
            tags["mlflow.parentRunId"] = parents[method]
        rid = client.create_run(exp_id, run_name=f"{method}-t{trial}", tags=tags).info.run_id
        ts = 1_000
        metrics = [Metric(k, 0.0, ts, 0) for k in ("target_gain", "nontarget_drop", "val/target_gain",
                                                   "val/nontarget_drop", "pld_drift", "kl_to_base")]
        metrics += [Metric("train/data_phi", PHI[method] + 0.1 * (s % 2), ts, s) for s in range(1, 21)]
        for step, gain, drop in points:
            ts += 1
            frac = step / points[-1][0]
            # validation equal to eval keeps the hand arithmetic short; the split logic is tested in test_claims
            vals = {"target_gain": gain, "target_gain_lo": gain - 2, "target_gain_hi": gain + 2,
                    "val/target_gain": gain, "val/nontarget_drop": drop,
                    "nontarget_drop": drop, "nontarget_drop_lo": max(0.0, drop - 0.5),
                    "nontarget_drop_hi": drop + 0.5, "pld_drift": -frac * kl, "kl_to_base": frac * kl,
                    "cost/flops": 1e9 * step * (1 + trial), **{f"drop/{t}": drop * (i + 1) / 1.5
                                                                for i, t in enumerate(TASKS)}}
            metrics += [Metric(k, float(v), ts, step) for k, v in vals.items()]
        # the harness re-logs the final evaluation with the run's summary: a duplicate at the last step
        metrics += [Metric(m.key, m.value, ts + 1, m.step) for m in metrics if m.step == points[-1][0]]
        client.log_batch(rid, metrics=metrics, params=[Param("train.lr", str(lr)), Param("method", method)],
                         tags=[RunTag("mlflow.runName", f"{method}-t{trial}")])
        client.set_terminated(rid, "FINISHED")
    # a FAILED run must be ignored
    bad = client.create_run(exp_id, tags={"kind": "run", "method": "sft", "sweep": "synth"}).info.run_id
    client.log_batch(bad, metrics=[Metric("target_gain", 99.0, 0, 10), Metric("nontarget_drop", -9.0, 0, 10)])
    client.set_terminated(bad, "FAILED")
    return parents


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Build the report once through the CLI (default experiment, default --out, artifacts logged)."""
    from harness.store import ensure_experiment, init_store
    from reports.cli import add_report_parser

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        client = init_store(uri)
        parents = _fill(client, ensure_experiment("synth"))
        time.sleep(0.01)
        ensure_experiment("later_without_runs")   # newer, but has no kind=run runs: must not be the default
        parser = argparse.ArgumentParser()
        add_report_parser(parser.add_subparsers())
        args = parser.parse_args(["report"])
        t0 = time.perf_counter()
        assert args.fn(args) == 0
        seconds = time.perf_counter() - t0
        yield {"out": root / "reports" / "out" / "synth", "client": client, "parents": parents,
               "seconds": seconds, "root": root}


def test_every_file_is_written_and_fast(report):
    out = report["out"]
    stems = ["fig1_gain_drop", "fig2_front_vs_lr", "fig3_pld_drift", "fig4_predictors", "fig5_per_task_drop",
             "fig6_compute_front", "fig7_matched_gain", "fig8_offpolicy_dial"]
    names = [f"{s}.{e}" for s in stems for e in ("png", "pdf")]
    names += ["report.html", "summary.md", "claims.csv", "front.csv", "matched_gain.csv", "predictors.csv", "runs.csv",
              "checkpoints.csv", "front_sft.csv", "front_grpo.csv", "front_zz_custom.csv"]
    for n in names:
        assert (out / n).is_file() and (out / n).stat().st_size > 0, n
    for s in stems:
        assert (out / f"{s}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{s}.pdf").read_bytes()[:5] == b"%PDF-"
    assert report["seconds"] < 60
    md = (out / "summary.md").read_text()
    assert all(f"({s}.png)" in md for s in stems) and "### zz_custom" in md


def test_frames_ignore_failed_runs_and_dedupe_steps(report):
    from reports.frame import load
    fr = load("synth", report["client"])
    assert len(fr.runs) == 5 and set(fr.runs["method"]) == {"sft", "grpo", "zz_custom"}
    assert sorted(fr.ckpts.groupby("run_id").size().tolist()) == [3] * 5      # steps 0, 10, 20 once each
    # mean of train/data_phi over steps 1..20 alternating phi, phi + 0.1
    assert fr.runs.groupby("method")["data_phi_mean"].mean().round(6).to_dict() == {
        "grpo": 0.05, "sft": -4.95, "zz_custom": -0.95}
    assert len(fr.parents) == 2 and len(fr.base) == 1


def test_pareto_set_and_matched_gain_against_hand_values(report):
    front = pd.read_csv(report["out"] / "front.csv")
    got = sorted((m, g, d) for m, g, d in front[["method", "target_gain", "nontarget_drop"]].itertuples(index=False))
    assert got == sorted(EXPECTED_FRONT)
    assert list(dict.fromkeys(front["method"])) == ["sft", "grpo", "zz_custom"]   # registry order, then others
    assert front.loc[front["method"] == "zz_custom", "step"].tolist() == [10]
    mg = pd.read_csv(report["out"] / "matched_gain.csv").set_index("gain_at_least")
    assert mg.index.tolist() == [5, 10, 15, 20, 25, 30, 35, 40]
    # first crossings, interpolated: sft 1e-4 crosses 25 halfway from (20, 5) to (30, 3) -> drop 4; at g = 5 and
    # 10 sft 1e-5 hits exactly (drops 0.5, 1) and has the lower validation drop; grpo 1e-4 crosses 30 a third of
    # the way from (25, 0) to (40, 5) -> 5/3
    assert mg.loc[5, "sft"] == 0.5 and mg.loc[10, "sft"] == 1 and mg.loc[25, "sft"] == pytest.approx(4.0)
    assert math.isnan(mg.loc[35, "sft"])
    assert mg.loc[10, "grpo"] == 0 and mg.loc[30, "grpo"] == pytest.approx(5 / 3) and mg.loc[15, "zz_custom"] == 4


def test_predictor_fit_against_hand_values(report):
    stats = pd.read_csv(report["out"] / "predictors.csv").set_index("predictor")
    kl = stats.loc[[i for i in stats.index if i.startswith("KL")][0]]
    assert kl["r"] == pytest.approx(0.8) and kl["r2"] == pytest.approx(0.64) and kl["n"] == 5
    pld = stats.loc[[i for i in stats.index if i.startswith("PLD drift")][0]]
    assert pld["r"] == pytest.approx(-0.8)      # the synthetic pld_drift is -kl at the final step


def test_artifacts_logged_on_every_parent(report):
    client = report["client"]
    for pid in report["parents"].values():
        names = {Path(f.path).name for f in client.list_artifacts(pid, "report")}
        assert {"report.html", "summary.md", "fig1_gain_drop.png", "fig1_gain_drop.pdf", "front.csv"} <= names


def test_unknown_experiment_is_a_clear_error(report, tmp_path, monkeypatch):
    from reports.cli import add_report_parser
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{report['root']}/mlflow.db")
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="no MLflow experiment named 'nope'"):
        args = parser.parse_args(["report", "--experiment", "nope", "--out", str(tmp_path), "--no-log"])
        args.fn(args)


def test_minimal_runs_still_give_every_file(tmp_path, monkeypatch):
    """Runs with only gain and drop (no CIs, no lr param, no FLOPs, no per-task drops, no parent) still report."""
    from harness.store import ensure_experiment, init_store
    from reports.build import build_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = init_store(uri)
    exp = ensure_experiment("bare")
    for i, (g, d) in enumerate([(3.0, 1.0), (-2.0, 0.5), (1.0, 0.2)]):
        arm = {"arm": "sft@mild"} if i == 2 else {}  # a variant arm (the dial's SFT on milder labels)
        rid = client.create_run(exp, tags={"kind": "run", "method": "sft" if i else "grpo", **arm}).info.run_id
        client.log_batch(rid, metrics=[Metric("target_gain", g, 0, 5), Metric("nontarget_drop", d, 0, 5)])
        client.set_terminated(rid, "FINISHED")
    files = build_report("bare", tmp_path / "out", client=client)
    assert all(p.stat().st_size > 0 for p in files.values()) and len(files) >= 20
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")  # the tables of every run hold the variant arms too
    assert sorted(runs["arm"]) == ["grpo", "sft", "sft@mild"]
    assert sorted(pd.read_csv(tmp_path / "out" / "checkpoints.csv")["arm"]) == ["grpo", "sft", "sft@mild"]


CHROMIUM = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_html_page_renders_every_image_offline(report, tmp_path):
    page = (report["out"] / "report.html").read_text()
    # self-contained: every image a data URI, nothing fetched from anywhere
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The page's own CSP allows images from data: URIs only, so anything else would fail to load. The test copy
    # adds one inline script (and permission for it) that writes how many images decoded into the DOM.
    probe = ("<script>window.addEventListener('load',function(){var im=[].slice.call(document.images);"
             "var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0}).length;"
             "var p=document.createElement('pre');p.id='imgcheck';p.textContent='IMAGES_OK '+ok+' OF '+im.length;"
             "document.body.appendChild(p);});</script>")
    assert "img-src data:" in page
    test_page = page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
    (tmp_path / "page.html").write_text(test_page.replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           "--dump-dom", (tmp_path / "page.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'id="imgcheck">IMAGES_OK (\d+) OF (\d+)<', dom)
    assert m is not None, f"the probe did not run; chromium printed: {dom[:300]!r}"
    assert m.group(1) == m.group(2) == "8"
