from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import running
from tests.tiny_models import smollm2_path

MODEL = "smollm2"


@pytest.fixture(scope="session")
def smollm2() -> str:
    return smollm2_path()


@pytest.fixture(scope="module")
def transformers_server(smollm2: str) -> Iterator[str]:
    """The generation service on the transformers engine with the packaged SmolLM2, as users run it."""
    env = {
        "INFERAG_GEN_ENGINE": "transformers",
        "INFERAG_GEN_MODEL": smollm2,
        "INFERAG_GEN_SERVED_MODEL_NAME": MODEL,
        "INFERAG_GEN_MAX_MODEL_LEN": "2048",
    }
    with running("services.generation.app", env) as base:
        yield base


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir: Path) -> Iterator[str]:
    """A tiny random Llama with a small admission limit, for overload and disconnect tests."""
    env = {
        "INFERAG_GEN_ENGINE": "transformers",
        "INFERAG_GEN_MODEL": str(tiny_model_dir),
        "INFERAG_GEN_SERVED_MODEL_NAME": "tiny",
        "INFERAG_GEN_MAX_INFLIGHT": "2",
        "INFERAG_GEN_NUM_THREADS": "1",
    }
    with running("services.generation.app", env) as base:
        yield base
