"""The MLflow store behind the harness: its URI, one-time creation, experiments, run lookup, stale runs.

Process-safe: the store is created under a directory lock, experiment creation tolerates a race, and
runs left RUNNING by a dead process on this host are closed KILLED.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from harness import mlflow_api
from harness.errors import HarnessError

log = logging.getLogger(__name__)

NOTE_TAG = MLFLOW_RUN_NOTE  # the UI shows this tag, on an experiment or a run, as its Markdown description
# The experiment-type selector of MLflow's UI writes this tag; "custom_model_development" is its
# "Machine learning" type (runs table, not the GenAI traces overview).
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"

HOST = socket.gethostname()
_initialized: set[str] = set()  # URIs whose store this process has already created/migrated


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's default sqlite:///mlflow.db made absolute (four slashes)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    # A relative sqlite path resolves against each process's cwd; pin it so workers and `mlflow ui` agree.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


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


def store_lock():
    """An exclusive lock across this machine's processes on the local sqlite store (a no-op for a server)."""
    db = _sqlite_path(tracking_uri())
    return _dir_lock(db.parent if db else None)


def _where(uri: str) -> str:
    """Where the harness looked for its store, and why there, for a one-line message."""
    db = _sqlite_path(uri)
    place = str(db) if db is not None else redact(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"{place} (from MLFLOW_TRACKING_URI)"
    return f"{place} (MLFLOW_TRACKING_URI is unset, so ./mlflow.db of the working directory)"


def redact(uri: str) -> str:
    """`uri` with any password replaced by ***, for messages and descriptions."""
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", uri)


def open_store(uri: str | None = None) -> MlflowClient:
    """A client for a store that already exists; never creates or migrates one (for read-only commands)."""
    uri = uri or tracking_uri()
    hint = "run `harness sweep` or `harness run` there first, or point MLFLOW_TRACKING_URI at the store"
    if uri.startswith(("http://", "https://", "databricks")):
        return MlflowClient(uri)  # a server owns its store: reading through it creates nothing here
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise HarnessError(f"no MLflow store at {_where(uri)}; {hint}")
    if "://" not in uri or uri.startswith("file:"):
        root = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not root.is_dir():
            raise HarnessError(f"no MLflow store at {_where(uri)}; {hint}")
        return MlflowClient(uri)
    import sqlalchemy

    # MlflowClient would create the tables of an empty database and stamp it; look first, read-only.
    engine = None
    try:
        engine = sqlalchemy.create_engine(uri)
        complete, current = mlflow_api.schema_state(engine)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:  # unreachable server, missing driver
        first = (str(e).strip().splitlines() or [""])[0]
        raise HarnessError(f"cannot read the MLflow store at {_where(uri)}: {type(e).__name__}: {first}") from None
    finally:
        if engine is not None:
            engine.dispose()
    if not complete:
        raise HarnessError(f"{_where(uri)} holds no MLflow store; {hint}")
    if current != mlflow_api.latest_schema():
        raise HarnessError(f"the MLflow store at {_where(uri)} was written by another MLflow version (schema "
                           f"{current}); back it up, then run `mlflow db upgrade {redact(uri)}`")
    return MlflowClient(uri)


def init_store(uri: str | None = None) -> MlflowClient:
    """Create/migrate the tracking DB once, serialised across processes; returns a client for it."""
    uri = uri or tracking_uri()
    if uri in _initialized:
        return MlflowClient(uri)
    db = _sqlite_path(uri)
    # MlflowClient() builds the store eagerly and that runs the alembic migrations; two processes doing
    # so on a fresh file race ("duplicate column name", "table ... already exists"), hence the lock.
    with _dir_lock(db.parent if db else None):
        fresh = db is not None and not db.exists()
        if fresh:
            _copy_schema(db)
        client = MlflowClient(uri)
        if fresh:
            _keep_schema(db)
    _initialized.add(uri)
    return client


def _schema_template() -> Path:
    """An empty, migrated sqlite store for this MLflow version in the harness cache (one migration per version)."""
    from importlib.metadata import version

    from harness.world import cache_root
    return cache_root() / "mlflow-schema" / f"mlflow-{version('mlflow')}.db"


def _copy_schema(db: Path) -> None:
    """Start a fresh sqlite store as a copy of the migrated template, if there is one (migrating takes ~6 s);
    MLflow then checks its schema version and creates the Default experiment, as on any fresh store."""
    import shutil
    template = _schema_template()
    if template.is_file():
        tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        os.replace(tmp, db)


def _keep_schema(db: Path) -> None:
    """Save the freshly migrated store, without its Default experiment (whose artifact location is this
    store's), as the template later fresh stores start from."""
    import shutil
    import sqlite3
    template = _schema_template()
    if template.is_file():
        return
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db, tmp)
        con = sqlite3.connect(tmp)
        with con:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            if {r[0] for r in con.execute("select count(*) from runs")} != {0}:
                raise sqlite3.DatabaseError("not an empty store")
            for table in ("experiment_tags", "experiments"):
                if table in tables:
                    con.execute(f"delete from {table}")
        con.close()
        os.replace(tmp, template)
    except (OSError, sqlite3.DatabaseError) as e:  # no template: the next fresh store migrates again
        log.debug("no MLflow schema template kept: %s", e)
        Path(tmp).unlink(missing_ok=True)


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
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={KIND_TAG: KIND_TRAINING})
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
