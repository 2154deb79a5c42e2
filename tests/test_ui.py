"""`harness ui` against a real `mlflow server` on 127.0.0.1, looked at in headless Chromium: the printed URL
shows the model-training runs table with the sweep's description, every arm's parent run with its trials
nested under it, and the description's link leads to the report figure among the parent's artifacts."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import Browser, find_chromium

CHROMIUM = find_chromium()
NAME, ARMS, TRIALS = "uitest", ("sft", "grpo"), 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_store(root: Path) -> dict[str, str]:
    """A finished two-arm sweep as the driver logs it (parents, descriptions, nested trials), no training;
    `harness report`'s files are stood in for by a figure and a page under report/. Returns the parents."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.store import ensure_experiment, init_store
    from sweeps.driver import describe, ensure_parent
    from sweeps.spec import load_spec

    client = init_store()
    spec = load_spec(None, [f"name={NAME}", "world=micro", f"trials={TRIALS}", "seeds=[0]", "variants={}"],
                     methods=list(ARMS))
    exp = ensure_experiment(NAME)
    parents = {a: ensure_parent(spec, a, exp) for a in ARMS}
    for a in ARMS:
        for t in range(TRIALS):
            rid = client.create_run(exp, run_name=f"{a}-t{t}-s0", tags={
                "mlflow.parentRunId": parents[a], "kind": "run", "sweep": NAME, "arm": a, "method": a,
                "trial": str(t), "seed": "0"}).info.run_id
            client.log_metric(rid, "target_gain", 10.0 * t)
            client.set_terminated(rid, "FINISHED")
    describe(spec, list(ARMS), exp, parents, None, 1)
    report = root / "report"
    report.mkdir()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(report / "fig1_gain_drop.png")
    plt.close(fig)
    (report / "report.html").write_text("<html><body><h1>report</h1></body></html>")
    for a in ARMS:
        client.log_artifacts(parents[a], str(report), "report")
        client.set_terminated(parents[a], "FINISHED")
    return parents


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium binary found (Debian: apt-get install chromium)")
def test_printed_url_shows_parents_with_nested_trials_and_the_report_figure(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    monkeypatch.chdir(store)
    parents = _sweep_store(tmp_path)
    before = sorted(os.listdir(store))

    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--no-browser"],
                          cwd=store, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    browser = None
    try:
        printed, url = [], None
        deadline = time.time() + 90
        while url is None and time.time() < deadline and ui.poll() is None:
            line = ui.stdout.readline()
            printed.append(line)
            m = re.match(r"open: (\S+)", line)
            url = m.group(1) if m else None
        assert url is not None, "".join(printed)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        assert "/runs?workflowType=machine_learning" in url
        assert f"sweep '{NAME}': 2 parent runs" in "".join(printed)

        browser = Browser(CHROMIUM, tmp_path / "profile")
        page = browser.page(url)
        parent_names = [f"{NAME}-{a}" for a in ARMS]
        cond = " && ".join(f"document.body.innerText.includes({n!r})" for n in parent_names)
        page.wait_for(f"document.querySelector('.ag-row') && {cond}", timeout=60)
        assert "/runs" in page.eval("location.href")          # the runs table, not the traces overview
        text = page.eval("document.body.innerText")
        assert f"Sweep {NAME}" in text and "Reproduce or resume" in text and "harness sweep" in text

        # the trials are hidden under each parent's expander; opening them shows them nested one level down
        opened = page.eval("""(() => {
            const b = document.querySelectorAll('button[data-component-id$="runnamecellrenderer.tsx_46"]');
            b.forEach(x => x.click()); return b.length; })()""")
        assert opened == len(ARMS)
        kids = [f"{a}-t{t}-s0" for a in ARMS for t in range(TRIALS)]
        page.wait_for(" && ".join(f"document.body.innerText.includes({k!r})" for k in kids), timeout=30)
        rows = page.eval("""Array.from(document.querySelectorAll('.ag-row')).map(r => {
            const c = r.querySelector('.ag-cell[col-id*="Run Name"]');
            if (!c) return null;
            const d = Array.from(c.querySelectorAll('div[style]')).find(x => x.style.width);
            return [Number(r.getAttribute('row-index')), c.innerText.trim().split(/\\s+/).pop(),
                    d ? parseInt(d.style.width) : 0]; }).filter(Boolean)""")
        order = [(name, depth) for _, name, depth in sorted(rows)]
        depth = dict(order)
        for a in ARMS:
            parent = f"{NAME}-{a}"
            i = [n for n, _ in order].index(parent)
            below = [n for n, _ in order[i + 1:i + 1 + TRIALS]]
            assert sorted(below) == sorted(f"{a}-t{t}-s0" for t in range(TRIALS)), order
            assert all(depth[k] > depth[parent] for k in below), order

        # the experiment's description links each arm's report; it opens the parent's artifacts at report/
        link = page.eval("Array.from(document.querySelectorAll('a')).filter(a => a.innerText.trim() == 'report')"
                         ".map(a => a.href)")
        sft_link = [h for h in link if parents["sft"] in h]
        assert sft_link and "artifacts/report/report.html" in sft_link[0], link
        page.goto(sft_link[0])
        page.wait_for("document.body.innerText.includes('fig1_gain_drop.png')", timeout=60)
        assert parents["sft"] in page.eval("location.href")
    finally:
        if browser is not None:
            browser.close()
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        finally:
            if ui.poll() is None:
                ui.kill()
    # the server and its helpers are gone with it, and browsing wrote nothing next to the store
    from harness.ui import _port_free
    assert _port_free(port)
    assert sorted(os.listdir(store)) == before
