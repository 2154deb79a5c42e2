"""One run in a process of its own: `python -m harness.isolated RUN.json` (or under `accelerate launch`).

A sweep with `isolate: true` (or `processes_per_run > 1`) writes the resolved run config, the method's config,
the parent MLflow run and the tags to a JSON file and starts this module on it, so a CUDA error, an out-of-memory
kill or a hung collective ends this process and fails one trial, while the worker goes on. The run logs to MLflow
as any run does; the worker reads its metrics back from there (never from this process's output).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def write_job(path: Path, cfg, mcfg, parent_run_id: str | None, tags: dict[str, str]) -> Path:
    """The job file `main` reads: resolved run config, method config, parent run id and tags."""
    path.write_text(json.dumps({"run": cfg.model_dump(mode="json"), "method": mcfg.model_dump(mode="json"),
                                "parent_run_id": parent_run_id, "tags": tags}))
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the job in the given file; exit 0 when it finished, non-zero otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.isolated RUN.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    from harness.config import RunConfig
    from harness.run import run
    from harness.method import get_method
    cfg = RunConfig.model_validate(job["run"])
    mcfg = get_method(cfg.method).Config.model_validate(job["method"])
    run(cfg, mcfg, parent_run_id=job["parent_run_id"], progress=False, extra_tags=job["tags"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
