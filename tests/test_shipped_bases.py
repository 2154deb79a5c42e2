"""Shipped toy bases: installed when the world's key matches and every checksum holds, pretrained here otherwise.

The micro world's base (pretrained by conftest on this machine, which is the "rebuilt base" every other test trains)
stands in for a shipped one: shipping it into a temporary folder and installing it into a fresh cache must give the
same bytes without pretraining; a corrupted file or `rebuild` must pretrain.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import pretrain, shipped_bases


class Pretrained(Exception):
    """Raised by the stand-in for pretraining, so a test sees that the harness chose to pretrain."""


def _no_pretraining(*args, **kwargs):
    raise Pretrained


@pytest.fixture
def shipped_micro(micro_world, tmp_path, monkeypatch):
    """(world, shipped folder, the source base folder) with SHIPPED_DIR pointed at a temporary folder."""
    world, _, _ = micro_world
    root = tmp_path / "bases"
    monkeypatch.setattr(shipped_bases, "SHIPPED_DIR", root)
    source = Path(world.base_path(progress=False))
    folder = shipped_bases.ship(world, source, root=root)
    monkeypatch.setattr(pretrain, "pretrain_base", _no_pretraining)
    return world, folder, source


def test_ship_writes_a_manifest_with_the_key_and_every_files_sha256(shipped_micro):
    world, folder, source = shipped_micro
    manifest = json.loads((folder / shipped_bases.MANIFEST).read_text())
    assert folder.name == manifest["base_key"] == world.cfg.base_key()
    assert "model.safetensors" in manifest["sha256"] and "config.json" in manifest["sha256"]
    assert "pretrain_seconds.txt" not in manifest["sha256"]  # the cache's bookkeeping, not the base
    assert manifest["sha256"]["model.safetensors"] == shipped_bases.file_sha256(source / "model.safetensors")
    assert shipped_bases.verify(folder) is None


def test_a_matching_shipped_base_is_installed_byte_for_byte_without_pretraining(shipped_micro, tmp_path):
    world, folder, source = shipped_micro
    dest = tmp_path / "fresh-cache" / "base"
    got = pretrain.ensure_base(world, dest, progress=False)
    assert got == dest
    assert (dest / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert (dest / shipped_bases.MANIFEST).exists()  # the record of where this base came from
    assert not dest.with_name("base.tmp").exists()


def test_a_corrupted_shipped_file_is_not_used(shipped_micro, tmp_path, capsys):
    world, folder, _ = shipped_micro
    blob = bytearray((folder / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(blob))
    assert "does not match its sha256" in shipped_bases.verify(folder)
    with pytest.raises(Pretrained):
        pretrain.ensure_base(world, tmp_path / "c" / "base", progress=False)
    assert "not using the shipped base" in capsys.readouterr().err


def test_rebuild_pretrains_even_when_a_copy_is_cached(shipped_micro, tmp_path):
    world, _, _ = shipped_micro
    dest = tmp_path / "c" / "base"
    pretrain.ensure_base(world, dest, progress=False)  # installed from the shipped copy
    assert pretrain.ensure_base(world, dest, progress=False) == dest  # cached: nothing to do
    with pytest.raises(Pretrained):
        pretrain.ensure_base(world, dest, progress=False, rebuild=True)
    assert not (dest / "model.safetensors").exists()


def test_no_shipped_base_for_another_key(shipped_micro):
    assert shipped_bases.shipped_base("0123456789ab") is None


def test_the_projects_shipped_bases_match_their_worlds_and_checksums():
    """Each shipped base is still the one its world's current config names (else fresh clones would pretrain)."""
    from benchmarks.world import WorldConfig
    from harness.config import world_presets

    folders = sorted(p.parent for p in shipped_bases.SHIPPED_DIR.glob(f"*/{shipped_bases.MANIFEST}"))
    assert folders, "the project ships at least the default toy world's base"
    keys = {WorldConfig(name=n, **world_presets("toy")[n].get("world", {})).base_key(): n for n in world_presets("toy")}
    for folder in folders:
        manifest = json.loads((folder / shipped_bases.MANIFEST).read_text())
        assert folder.name == manifest["base_key"]
        assert manifest["base_key"] in keys, f"{folder} matches no toy world preset's current config"
        assert shipped_bases.verify(folder) is None
    assert WorldConfig(name="toy", **world_presets("toy")["toy"].get("world", {})).base_key() in {f.name for f in folders}
