"""The private parts of MLflow the harness uses, in one place: a release that moves them fails here, loudly.

Checked against the MLflow versions in CHECKED (tests/test_dependency_apis.py pins the installed one and that every
name below still exists). Each has no public equivalent that does the same:
- the store's schema state (`mlflow.store.db.utils`): MlflowClient would create and stamp the tables of an empty
  database, and the harness must look read-only before it lets a report open one;
- the bulk metric history of a SQL store (`client._tracking_client.store.get_metric_history_bulk`): one query per
  key for all runs, where the public route is one call per (run, key);
- MLflow's process-wide tracking URI (`mlflow.tracking._tracking_service.utils._tracking_uri`): `mlflow.search_runs`
  reads only it, and restoring it exactly (usually unset) needs the raw global — `mlflow.get_tracking_uri()` returns
  the resolved default instead of "unset".
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

CHECKED = ((3, 17), (3, 18))  # [lowest, highest) MLflow release (major, minor) these adapters were read against


def schema_state(engine) -> tuple[bool, str | None]:
    """(whether every MLflow table exists, the stamped alembic revision or None) of a SQL database, read-only."""
    from mlflow.store.db import utils as db_utils
    complete = db_utils._all_tables_exist(engine)
    return complete, db_utils._get_schema_version(engine) if complete else None


def latest_schema() -> str:
    """The alembic revision this MLflow writes: a store stamped otherwise needs `mlflow db upgrade`."""
    from mlflow.store.db import utils as db_utils
    return db_utils._get_latest_schema_revision()


def bulk_metric_history(client) -> Callable | None:
    """The SQL store's `get_metric_history_bulk(run_ids, key, max_results)` behind a client, or None (a server)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return getattr(store, "get_metric_history_bulk", None)


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at `uri` for a block, then put the global back exactly as it was."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils
    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri = previous
