from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from services.generation.app import build_app
from services.generation.settings import GenerationSettings
from tests.tiny_models import build_tiny_llama, data_dir

TINY = "tiny-llama"

# The tests compare the services with float32 references (transformers' generate, SentenceTransformer.encode
# ...), so `auto` means float32 here on every CPU, also one with native bf16 where it means bfloat16: the
# embedding servers the tests start read this, in-process engines the flags below. (Not INFERAG_GEN_DTYPE:
# vLLM's `auto` downcasts a float32 checkpoint and its tests expect that.) The choice itself is tested in
# tests/unit/test_cpu_dtype.py; bfloat16's quality on the packaged models in the same file.
os.environ.setdefault("INFERAG_EMB_DTYPE", "float32")


@pytest.fixture(scope="session", autouse=True)
def _cpu_without_bf16() -> Iterator[None]:
    import services.common.cpu

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(services.common.cpu, "cpu_flags", lambda path="/proc/cpuinfo": frozenset())
        yield


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
