"""`harness ui`: MLflow's UI on 127.0.0.1, pointed at the newest sweep's runs table.

MLflow 3's UI opens on its GenAI pages (a home page, then an experiment's traces). Which view an experiment
page shows is its *workflow type*: the `workflowType` query parameter, else the sidebar's switch remembered
by the browser; `machine_learning` is the model-training view, whose runs table nests each sweep's trials
under the arm's parent run. The URL printed here carries it, and harness experiments also carry
`mlflow.experimentKind=custom_model_development`, the tag MLflow's experiment-type selector writes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import webbrowser
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import ViewType

from harness.errors import HarnessError

WORKFLOW_TYPE = "machine_learning"
START_TIMEOUT_S = 90.0


def runs_url(base: str, experiment_id: str) -> str:
    """The model-training runs table of an experiment (parent runs with their trials nested)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW_TYPE}"


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page, or one of its artifacts selected in the run's artifact browser."""
    tail = f"/artifacts/{artifact}" if artifact else ""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{tail}?workflowType={WORKFLOW_TYPE}"


def sweeps(client: MlflowClient) -> list[tuple[str, str, int]]:
    """(experiment id, name, parent runs) of every experiment with sweep parent runs, newest sweep first."""
    exps = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not exps:
        return []
    parents = client.search_runs(list(exps), "tags.kind = 'parent'", order_by=["attributes.start_time DESC"],
                                 max_results=5000)
    order: dict[str, int] = {}
    for r in parents:
        order[r.info.experiment_id] = order.get(r.info.experiment_id, 0) + 1
    return [(eid, exps[eid], n) for eid, n in order.items()]


def pick(client: MlflowClient, experiment: str | None) -> tuple[str, str, int] | None:
    """The experiment to show: the named one, else the newest sweep, else the newest experiment with runs."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise HarnessError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}; experiments: "
                               f"{names}")
        n = len(client.search_runs([exp.experiment_id], "tags.kind = 'parent'", max_results=5000))
        return exp.experiment_id, exp.name, n
    found = sweeps(client)
    if found:
        return found[0]
    exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, order_by=["last_update_time DESC"])
    for e in exps:
        if client.search_runs([e.experiment_id], max_results=1):
            return e.experiment_id, e.name, 0
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server will: closed connections lingering in TIME_WAIT do not make the port busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_server(uri: str, port: int, log_path: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` for `uri`, returned once it answers /health."""
    if not _port_free(port):
        raise HarnessError(f"port {port} on 127.0.0.1 is in use (another `harness ui`?); pass --port {port + 1}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    # The job runner (GenAI scorers, trace archival) starts half a dozen worker processes and writes job
    # tables; browsing runs needs none of it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}
    with open(log_path, "wb") as log:
        # Its own process group, so stop_server ends uvicorn and every helper the server started.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            stop_server(proc)
            tail = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()][-1:] or ["no output"]
            raise HarnessError(f"mlflow server exited with code {proc.returncode}: {tail[0][:300]} (log: {log_path})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise HarnessError(f"mlflow server did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s "
                       f"(log: {log_path})")


def stop_server(proc: subprocess.Popen) -> None:
    """End the server and everything it started (SIGTERM, then SIGKILL after 10 s)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def browser_available() -> bool:
    """True where opening a URL shows a graphical browser (never a text browser taking over the terminal)."""
    if not sys.stdout.isatty():
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def serve(experiment: str | None = None, port: int = 5000, open_browser: bool = True) -> int:
    """Serve the UI until interrupted; prints the URL of the chosen sweep's runs table first."""
    from harness.store import open_store, redact

    client = open_store()  # read-only: says where it looked when there is no store yet
    target = pick(client, experiment)
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"harness-ui-{port}.log"
    proc = start_server(client.tracking_uri, port, log_path)
    print(f"MLflow UI for {redact(client.tracking_uri)} at {base} (server log: {log_path}; Ctrl-C stops it)")
    if target is None:
        url = base
        print(f"no runs yet; open {url}")
    else:
        eid, name, parents = target
        url = runs_url(base, eid)
        what = f"sweep {name!r}: {parents} parent runs (one per arm), trials nested" if parents else repr(name)
        print(f"{what}\nopen: {url}")
        others = [s for s in sweeps(client) if s[0] != eid][:5]
        if others:
            print("other sweeps: " + ", ".join(f"{n!r} {runs_url(base, e)}" for e, n, _ in others))
    sys.stdout.flush()
    if open_browser and browser_available():
        try:
            webbrowser.open(url, new=2)
        except webbrowser.Error:
            pass
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, as Ctrl-C does
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, previous)
