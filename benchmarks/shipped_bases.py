"""Toy bases shipped with the project, so a fresh clone starts from the README's base instead of pretraining its own.

Pretraining runs single-threaded and seeded, yet the float kernels differ between CPUs (AVX2 against AVX-512, say),
so two machines pretrain slightly different bases from one world config (the worked-label NLL measured 151.0 against
153.8 nats), and every fine-tuning number downstream differs with them. A shipped base is the folder
`save_pretrained` wrote, stored under `benchmarks/bases/<base_key>/` with a manifest that names the key and the
sha256 of every file. `ensure_base` installs it into the cache when the world's `base_key` matches and every checksum
holds; otherwise it pretrains as before. `harness fetch --world NAME --rebuild-base` pretrains on this machine
instead (and replaces the cached copy). Maintainers add a base with `python -m benchmarks.shipped_bases ship --world
NAME` after pretraining it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "bases"
MANIFEST = "shipped.json"
# The cache's own bookkeeping is not part of a base.
_SKIPPED = {MANIFEST, "pretrain_seconds.txt"}


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_base(base_key: str, root: Path | None = None) -> Path | None:
    """The shipped folder of a base key, or None if the project ships none for it."""
    folder = (root or SHIPPED_DIR) / base_key
    return folder if (folder / MANIFEST).is_file() else None


def verify(folder: Path) -> str | None:
    """None if every file the manifest lists is present with its sha256; else what is wrong, in words."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, want in manifest["sha256"].items():
        f = folder / name
        if not f.is_file():
            return f"{f} is missing"
        if file_sha256(f) != want:
            return f"{f} does not match its sha256 in {folder / MANIFEST}"
    return None


def install(folder: Path, dest: Path) -> None:
    """Copy a verified shipped base's files (manifest included, as the record of where it came from) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in [*manifest["sha256"], MANIFEST]:
        shutil.copy2(folder / name, dest / name)


def ship(world, cached: Path, root: Path | None = None) -> Path:
    """Store a cached base under the shipped folder with its manifest (base key, world fields, sha256 per file)."""
    import torch
    import transformers

    key = world.cfg.base_key()
    dest = (root or SHIPPED_DIR) / key
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    sums = {}
    for f in sorted(cached.iterdir()):
        if f.is_file() and f.name not in _SKIPPED and not f.name.endswith(".lock"):
            shutil.copy2(f, dest / f.name)
            sums[f.name] = file_sha256(f)
    seconds = cached / "pretrain_seconds.txt"
    manifest = {"base_key": key, "world": world.cfg.name,
                "world_config": json.loads(world.cfg.model_dump_json()),
                "pretrain_seconds": float(seconds.read_text()) if seconds.exists() else None,
                "built_with": {"torch": torch.__version__, "transformers": transformers.__version__},
                "sha256": sums}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.shipped_bases ship --world NAME`: pretrain (or reuse) the base and store it here."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.shipped_bases", description=main.__doc__)
    p.add_argument("action", choices=["ship"])
    p.add_argument("--world", default="toy", help="toy world preset (see `harness list`)")
    args = p.parse_args(argv)
    from harness.config import resolve_config
    from harness.world import build_world
    cfg = resolve_config(world=args.world, method="sft")
    if cfg.world.kind != "toy":
        print(f"only toy worlds are pretrained by the harness; `{args.world}` is a {cfg.world.kind} world",
              file=sys.stderr)
        return 2
    world = build_world(cfg.world)
    print(ship(world, Path(world.base_path())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
