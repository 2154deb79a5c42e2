"""Worlds and tasks: the embedded `toy` world's generators, verifiers, teacher labels and base recipe."""
from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).parent / "presets"  # world presets of every kind (harness.world.PRESETS names it)
