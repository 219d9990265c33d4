from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from services.generation.app import build_app
from services.generation.settings import GenerationSettings
from tests.tiny_models import build_tiny_llama, data_dir

TINY = "tiny-llama"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def tiny_settings(model_dir: Path, **overrides: object) -> GenerationSettings:
    values: dict[str, object] = {
        "engine": "transformers",
        "model": str(model_dir),
        "served_model_name": TINY,
        "max_model_len": 512,
        "num_threads": 1,
        "data_dir": data_dir(),
        **overrides,
    }
    return GenerationSettings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tiny_client(tiny_model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The generation app in-process on the transformers engine and a tiny random Llama."""
    app = build_app(tiny_settings(tiny_model_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            for _ in range(600):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"app not ready: {app.state.load_error}")
            yield client
