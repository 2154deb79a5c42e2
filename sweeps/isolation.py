"""Sweeps on GPU machines: each run in a process of its own, and each worker on the devices it owns.

With `isolate: true` (or `processes_per_run > 1`, which launches every run with `accelerate launch`), a CUDA
error, an out-of-memory kill or a hung collective ends one child process and fails one trial; the worker, its
heartbeat and the other trials go on. `devices` splits a machine's GPUs among its workers (CUDA_VISIBLE_DEVICES),
and `run_timeout_h` kills a run that hangs. Results are read back from MLflow, where the child logged them.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from harness.config import RunConfig
from harness.errors import HarnessError
from sweeps.spec import SweepSpec


def run_isolated(spec: SweepSpec, cfg: RunConfig, parent_id: str, tags: dict[str, str]) -> str:
    """One run in a child process (`accelerate launch` with processes_per_run > 1); its MLflow run id.

    The child logs to MLflow itself; a non-zero exit or a timeout raises, which fails this trial only.
    """
    import subprocess
    import tempfile

    from harness.isolated import write_job
    from harness.store import find_run, init_store, mark_stale_runs

    with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
        job = write_job(Path(tmp) / "run.json", cfg, parent_id, tags)
        env = dict(os.environ)
        if spec.processes_per_run > 1:
            # A port of its own: concurrent workers would otherwise all rendezvous on accelerate's 29500.
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                   "--num_processes", str(spec.processes_per_run), "--main_process_port", str(_free_port()),
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "harness.isolated"]
            if cfg.train.device == "cpu":
                env["ACCELERATE_USE_CPU"] = "1"  # gloo processes; `--cpu` alone would start only one
        else:
            cmd = [sys.executable, "-m", "harness.isolated"]
        timeout = spec.run_timeout_h * 3600 if spec.run_timeout_h else None
        try:
            proc = subprocess.run(cmd + [str(job)], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            mark_stale_runs(init_store().get_experiment_by_name(spec.name).experiment_id)
            raise RuntimeError(f"run timed out after {spec.run_timeout_h:g} h (run_timeout_h) and was killed")
    if proc.returncode != 0:
        mark_stale_runs(init_store().get_experiment_by_name(spec.name).experiment_id)
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        raise RuntimeError(f"run process exited with code {proc.returncode}: {tail}")
    done = find_run(spec.name, tags)
    if done is None:
        raise RuntimeError("the run process exited cleanly but left no FINISHED run in MLflow")
    return done


def _free_port() -> int:
    """A TCP port nothing listens on now (the launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_devices(spec: SweepSpec, worker: int, workers: int) -> str | None:
    """CUDA_VISIBLE_DEVICES of one worker: its equal slice of `spec.devices` (None: leave the environment as is)."""
    if not spec.devices:
        return None
    per = len(spec.devices) // workers
    if per < 1:
        raise HarnessError(f"{workers} workers but {len(spec.devices)} devices; give each worker at least one "
                           f"(fewer --workers or more devices)")
    return ",".join(str(d) for d in spec.devices[worker * per:(worker + 1) * per])


