"""MLflow tracking: one explicit run per RunTracker, always ended FINISHED, FAILED or KILLED, never left RUNNING."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
import traceback
from pathlib import PurePosixPath
from types import FrameType, TracebackType
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from harness.store import HOST, ensure_experiment, init_store

log = logging.getLogger(__name__)

_REASON_MAX = 1000  # failure_reason is read in the UI's tag list; the full traceback goes to an artifact


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler; a KeyboardInterrupt so `except Exception` in user code cannot swallow it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler active while a run is open: unwind like Ctrl-C so the run ends KILLED."""
    raise Terminated("terminated (SIGTERM)")


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
