"""World kinds are reached through one lazy table (`harness.world.WORLD_KINDS`, "kind": "module:Class"): every entry
resolves, every shipped preset names a kind of the table, a run config round-trips through JSON whatever its kind, and
a third kind written into a throw-away module is validated, built, listed and offered as a preset with no other edit
than its line in the table."""
from __future__ import annotations

import shutil
import sys
import textwrap

import pytest

from harness.config import RunConfig, resolve_config, world_presets
from harness.errors import HarnessError
from harness.world import WORLD_KINDS, World, build_world, world_class, world_kind

ECHO = '''
from typing import Literal

from benchmarks.world import ToyWorld, WorldConfig


class EchoConfig(WorldConfig):
    """A toy world with one more setting."""

    kind: Literal["echo"] = "echo"
    greeting: str = "hi"
    """Said by nobody: it only has to validate and round-trip."""


class EchoWorld(ToyWorld):
    Config = EchoConfig
'''


def test_every_kind_resolves_to_a_world_whose_config_names_it():
    for kind in WORLD_KINDS:
        cls = world_class(kind)
        assert issubclass(cls, World) and cls.Config.model_fields["kind"].default == kind


def test_every_shipped_preset_names_a_kind_of_the_table():
    presets = world_presets()
    assert {"toy", "micro", "smollm2-135m-arith"} <= set(presets)  # toy presets are YAML beside the real ones
    assert {world_kind(p.get("world") or {}) for p in presets.values()} == set(WORLD_KINDS)
    assert set(world_presets("toy")) == {"toy", "micro"}


@pytest.mark.parametrize("world", ["micro", "smollm2-135m-arith"])
def test_a_run_config_round_trips_through_json(world):
    cfg = resolve_config(world=world, method="grpo")
    back = RunConfig.model_validate_json(cfg.model_dump_json())
    assert back == cfg and type(back.world) is type(cfg.world)


def test_an_unknown_kind_is_named_with_the_valid_ones():
    with pytest.raises(HarnessError, match=r"unknown world kind 'rael'. Did you mean 'real'\? Valid: real, toy"):
        resolve_config(world="micro", overrides=["world.kind=rael"])


@pytest.fixture
def echo_kind(tmp_path, monkeypatch):
    """The kind `echo`, from a module of its own on sys.path, registered by one line in the table."""
    (tmp_path / "echo_world_kind.py").write_text(textwrap.dedent(ECHO))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(WORLD_KINDS, "echo", "echo_world_kind:EchoWorld")
    yield
    sys.modules.pop("echo_world_kind", None)


def test_a_third_kind_is_validated_built_and_round_tripped(echo_kind):
    cfg = resolve_config(world="micro", overrides=["world.kind=echo", "world.greeting=hello"])
    assert type(cfg.world).__name__ == "EchoConfig" and cfg.world.greeting == "hello"
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg
    world = build_world(cfg.world)
    assert type(world).__name__ == "EchoWorld" and world.tasks == ["sort", "rev", "add", "max"]
    with pytest.raises(HarnessError, match="world.greting.*Did you mean 'world.greeting'"):  # its own keys listed
        resolve_config(world="micro", overrides=["world.kind=echo", "world.greting=hello"])


def test_a_preset_of_a_third_kind_is_listed_and_resolved(echo_kind, tmp_path, monkeypatch, capsys):
    import benchmarks
    from harness.cli import main

    presets = tmp_path / "presets"
    shutil.copytree(benchmarks.PRESET_DIR, presets)
    micro = (presets / "micro.yaml").read_text().replace("kind: toy", "kind: echo\n  greeting: hello")
    (presets / "echo-micro.yaml").write_text(micro)
    monkeypatch.setattr(benchmarks, "PRESET_DIR", presets)
    assert main(["list"]) == 0
    assert "`echo-micro` (world seed 0): target `sort`" in capsys.readouterr().out
    cfg = resolve_config(world="echo-micro")
    assert cfg.world.kind == "echo" and cfg.world.greeting == "hello" and cfg.train.max_steps == 8
