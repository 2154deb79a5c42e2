"""MLflow tracking: one explicit run per RunTracker, always ended FINISHED, FAILED or KILLED, never left RUNNING."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path, PurePosixPath
from types import FrameType, TracebackType
from typing import Any, Iterator, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

log = logging.getLogger(__name__)

HOST = socket.gethostname()
_REASON_MAX = 1000  # failure_reason is read in the UI's tag list; the full traceback goes to an artifact
_initialized: set[str] = set()  # URIs whose store this process has already created/migrated


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler; a KeyboardInterrupt so `except Exception` in user code cannot swallow it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler active while a run is open: unwind like Ctrl-C so the run ends KILLED."""
    raise Terminated("terminated (SIGTERM)")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's default sqlite:///mlflow.db made absolute (four slashes)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    # A relative sqlite path resolves against each process's cwd; pin it so workers and `mlflow ui` agree.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists, tuples and empty dicts as JSON, everything else str()."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        elif isinstance(value, (list, tuple, Mapping)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending with a note saying it was cut."""
    if len(text) <= limit:
        return text
    note = f" ...[truncated from {len(text)} chars]"
    return text[: limit - len(note)] + note


def _sqlite_path(uri: str) -> Path | None:
    """The database file behind a local sqlite URI, else None."""
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _dir_lock(directory: Path | None) -> Iterator[None]:
    """Exclusive flock on a directory (no stray lock file next to mlflow.db); a no-op without one."""
    if directory is None:
        yield
        return
    import fcntl  # POSIX only; imported here so the module still imports elsewhere

    directory.mkdir(parents=True, exist_ok=True)  # sqlite cannot create missing parent directories
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def init_store(uri: str | None = None) -> MlflowClient:
    """Create/migrate the tracking DB once, serialised across processes; returns a client for it."""
    uri = uri or tracking_uri()
    if uri in _initialized:
        return MlflowClient(uri)
    db = _sqlite_path(uri)
    # MlflowClient() builds the store eagerly and that runs the alembic migrations; two processes doing
    # so on a fresh file race ("duplicate column name", "table ... already exists"), hence the lock.
    with _dir_lock(db.parent if db else None):
        client = MlflowClient(uri)
    _initialized.add(uri)
    return client


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing; safe when several processes create it at once."""
    client = init_store()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        db = _sqlite_path(client.tracking_uri)
        if artifact_location is None and db is not None:
            # MLflow's default is ./mlruns of whatever cwd created the store; keep artifacts next to the DB
            # instead. Names may share a slug: harmless, every run has its own run_id subdirectory.
            artifact_location = str(db.parent / "mlruns" / re.sub(r"[^A-Za-z0-9._-]+", "_", name))
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)  # another process won the race: use theirs
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        # A deleted experiment still owns its name, so creating it again would fail.
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _quote(value: str) -> str | None:
    """`value` as an MLflow filter literal (no escapes exist: pick the quote it lacks); None if it has both."""
    if "'" not in value:
        return f"'{value}'"
    return f'"{value}"' if '"' not in value else None


def _pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a killed child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust os.kill


def mark_stale_runs(experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs started on this host by a process that no longer exists; their ids."""
    client = init_store()
    stale = []
    # One page of up to 50000, read in full before any is modified (paging while changing status skips runs).
    running = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.host = {_quote(HOST)}",
                                 max_results=SEARCH_MAX_RESULTS_THRESHOLD)
    for run in running:
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and not _pid_alive(int(pid)):
            client.set_tag(run.info.run_id, "failure_reason", f"process died (pid {pid})")
            client.set_terminated(run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    return stale


def find_run(experiment: str, tags: Mapping[str, Any]) -> str | None:
    """The newest FINISHED run of `experiment` carrying all of `tags` (e.g. a cached base-model eval), or None."""
    client = init_store()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    want = {k: str(v) for k, v in tags.items()}
    clauses = ["attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{k}` = {q}" for k, v in want.items() if (q := _quote(v)) is not None]
    runs = client.search_runs([exp.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"],
                              max_results=SEARCH_MAX_RESULTS_THRESHOLD)
    for run in runs:
        if all(run.data.tags.get(k) == v for k, v in want.items()):  # also checks values _quote could not express
            return run.info.run_id
    return None


class RunTracker:
    """Context manager owning one MLflow run: creates it, logs to it, and always terminates it."""

    def __init__(self, experiment: str, run_name: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
                 artifact_location: str | None = None) -> None:
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self._params, self._tags, self._artifact_location = dict(params or {}), dict(tags or {}), artifact_location
        self.client: MlflowClient = None  # type: ignore[assignment]  # set in __enter__
        self.experiment_id: str = ""
        self.run_id: str = ""
        self.status: str | None = None  # the final status once the run has ended
        self._prev_sigterm: Any = None
        self._own_sigterm = False
        self._pending: list[Metric] = []  # buffered per-step metrics, written at the next log_metrics or exit

    def __enter__(self) -> RunTracker:
        # Handler first: a SIGTERM during setup must still end the run; signals only work in the main thread.
        if threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
            self._own_sigterm = True
        try:
            self.experiment_id = ensure_experiment(self.experiment, self._artifact_location)
            self.client = init_store()
            # resolve_tags adds what mlflow.start_run would (user, source, git commit); pid/host find stale runs.
            tags = resolve_tags({**self._tags, "pid": os.getpid(), "host": HOST})
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            tags = {k: _clip(str(v), MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
            self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name).info.run_id
            self.log_params(self._params)
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)  # __exit__ is not called when __enter__ raises
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        """End the run by how the block exited; the exception, if any, propagates."""
        held: list[int] = []
        prev_int: Any = None
        if self._own_sigterm:
            # Hold a second Ctrl-C/SIGTERM while the end status is written, re-delivered once the run is closed.
            prev_int = signal.signal(signal.SIGINT, lambda n, f: held.append(n))
            signal.signal(signal.SIGTERM, lambda n, f: held.append(n))
        try:
            if self.run_id and self._pending:
                with contextlib.suppress(Exception):  # a write error must not mask the block's own outcome
                    self.flush()
            if self.run_id and self.status is None:
                if exc is None:
                    self._end("FINISHED")
                else:
                    try:
                        self._end_after(exc)
                    except Exception:  # never mask the user's exception; mark_stale_runs cleans up later
                        log.exception("could not end MLflow run %s", self.run_id)
        finally:
            if self._own_sigterm:
                signal.signal(signal.SIGINT, signal.SIG_DFL if prev_int is None else prev_int)
                signal.signal(signal.SIGTERM, signal.SIG_DFL if self._prev_sigterm is None else self._prev_sigterm)
                self._own_sigterm = False
                for signum in held:
                    signal.raise_signal(signum)  # now reaches the outer run's handler, or the default
        return False

    def _end_after(self, exc: BaseException) -> None:
        """End KILLED for Ctrl-C/SIGTERM, FAILED for anything else, with the reason as tags."""
        if isinstance(exc, KeyboardInterrupt):
            reason = str(exc) if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
            self._end("KILLED", reason, type(exc).__name__)
            return
        with contextlib.suppress(Exception):  # the traceback is a debugging aid, not worth failing over
            self.log_text("".join(traceback.format_exception(exc)), "failure/traceback.txt")
        self._end("FAILED", str(exc) or type(exc).__name__, type(exc).__name__)

    def _end(self, status: str, reason: str | None = None, error_type: str | None = None) -> None:
        """Record why the run stopped, then terminate it (even if writing the reason failed)."""
        try:
            if reason is not None:
                self.set_tags({"failure_reason": _clip(reason, _REASON_MAX),
                               **({"error_type": error_type} if error_type else {})})
        finally:
            self.client.set_terminated(self.run_id, status)
            self.status = status

    def fail(self, reason: str, error_type: str | None = None) -> None:
        """End the run FAILED now with `reason` as failure_reason; the `with` exit then keeps that status."""
        if self.status is None:
            self._end("FAILED", reason, error_type)

    def _log_batch(self, kind: str, items: list[Any], size: int) -> None:
        """log_batch in chunks of MLflow's per-call limit for `kind` (params, tags or metrics)."""
        for i in range(0, len(items), size):
            # synchronous=True even if MLFLOW_ENABLE_ASYNC_LOGGING is set: queued entries die with a crash.
            self.client.log_batch(self.run_id, **{kind: items[i:i + size]}, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params, 100 per call; values over MLflow's 6000 chars are truncated with a note."""
        for key, value in params.items():
            if len(str(value)) > MAX_PARAM_VAL_LENGTH:
                log.warning("param %s has %d chars, over MLflow's limit of %d: truncated",
                            key, len(str(value)), MAX_PARAM_VAL_LENGTH)
        items = [Param(k, _clip(str(v), MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]
        self._log_batch("params", items, MAX_PARAMS_TAGS_PER_BATCH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags, 100 per call; values stringified and cut to MLflow's length limit."""
        items = [RunTag(k, _clip(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        self._log_batch("tags", items, MAX_PARAMS_TAGS_PER_BATCH)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics at `step` now (with anything buffered), 1000 per call (~15x cheaper than one per key)."""
        self.buffer_metrics(metrics, step)
        self.flush()

    def buffer_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue metrics at `step`; they are written by the next log_metrics/flush, or when the run ends.

        Per-step training curves go through here: one SQL transaction per step cost ~10% of a toy run.
        """
        ts = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        if len(self._pending) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics."""
        pending, self._pending = self._pending, []
        self._log_batch("metrics", pending, MAX_METRICS_PER_BATCH)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Log a JSON (or .yaml/.yml) artifact; unserialisable values are stringified."""
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log a text artifact."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a local file or directory into the run's artifacts (under `artifact_path`)."""
        self.client.log_artifact(self.run_id, os.fspath(local_path), artifact_path)

    def log_table(self, data: Any, artifact_file: str) -> None:
        """Log a DataFrame or list of row dicts: .csv via pandas, .json as MLflow's table format (appends)."""
        import pandas as pd  # pandas is only needed here; keep it off the import path of the module

        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        path = PurePosixPath(artifact_file)
        if path.suffix == ".json":
            self.client.log_table(self.run_id, df, artifact_file)
            return
        if path.suffix != ".csv":
            raise ValueError(f"log_table: {artifact_file!r} must end in .csv or .json")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, path.name)
            df.to_csv(local, index=False)
            self.client.log_artifact(self.run_id, local, None if str(path.parent) == "." else str(path.parent))
