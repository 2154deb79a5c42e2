"""Shared fixtures: the micro world's pretrained base, built once per test session in a temporary cache."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # tiny models run fastest single-threaded; CI machines have 2 shared cores


def pytest_report_header(config) -> str:
    import transformers
    return f"transformers {transformers.__version__} ({transformers.__file__})"


def pytest_configure(config) -> None:
    """`make test-pinned` runs the suite on the transformers vLLM pins: fail loudly if another one was imported."""
    want = os.environ.get("HARNESS_EXPECT_TRANSFORMERS")
    if want:
        import transformers
        if transformers.__version__ != want:
            raise pytest.UsageError(f"expected transformers {want}, imported {transformers.__version__} from "
                                    f"{transformers.__file__}")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """A harness cache for the whole session (tests that set their own override it): what the harness keeps
    across stores and processes (the MLflow schema template, where lm-eval's task YAMLs are) never lands in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("session_cache")))
        yield


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    """(world, model, tokenizer) of the `micro` preset; pretraining takes ~10-30 s, so it is shared."""
    from benchmarks.world import ToyWorld, WorldConfig
    from harness.config import world_presets
    from harness.modeling import load_model

    with pytest.MonkeyPatch.context() as mp:
        # The session's own cache: never read or write the user's ~/.cache from tests.
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness_cache")))
        world = ToyWorld(WorldConfig(name="micro", **world_presets("toy")["micro"]["world"]))
        model, tokenizer = load_model(world.base_path(progress=False))
        yield world, model, tokenizer
