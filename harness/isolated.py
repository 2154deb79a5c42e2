"""One run in a process of its own: `python -m harness.isolated RUN.json` (or under `accelerate launch`).

A sweep with `isolate: true` (or `processes_per_run > 1`) writes the run's job file — the resolved run config's
JSON (the method's settings inside it), the parent MLflow run and the tags — and starts this module on it, so a
CUDA error, an out-of-memory kill or a hung collective ends this process and fails one trial, while the worker goes
on. The run logs to MLflow as any run does; the worker reads its metrics back from there (never from this
process's output).
"""
from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from harness.config import RunConfig


class Job(BaseModel):
    """An isolated run's job file: the run config and where its MLflow run hangs."""

    model_config = ConfigDict(extra="forbid")

    run: RunConfig
    parent_run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


def write_job(path: Path, cfg: RunConfig, parent_run_id: str | None, tags: dict[str, str]) -> Path:
    """The job file `main` reads (`Job`'s JSON: `Job.model_validate_json` reads back an equal run config)."""
    path.write_text(Job(run=cfg, parent_run_id=parent_run_id, tags=tags).model_dump_json())
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the job in the given file; exit 0 when it finished, non-zero otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.isolated RUN.json", file=sys.stderr)
        return 2
    job = Job.model_validate_json(Path(args[0]).read_text())
    from harness.run import run
    run(job.run, parent_run_id=job.parent_run_id, progress=False, extra_tags=job.tags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
