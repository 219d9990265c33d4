"""`make run`'s process: generation and embeddings behind one port, reached with the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import free_port, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    port = free_port()
    env = {"INFERAG_PORT": str(port), "INFERAG_GEN_DEFAULT_MAX_TOKENS": "64", "INFERAG_LOG_LEVEL": "warning",
           "INFERAG_RAG_QDRANT_PATH": ":memory:"}
    with running("services.gateway.app", env, port=port, timeout=600) as base:
        yield base


def test_one_port_serves_chat_and_embeddings(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused")
    ids = {m.id for m in client.models.list().data}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= ids, ids
    # nothing configured: the packaged model is served with the packaged grounded adapter merged
    cards = {m["id"]: m for m in httpx.get(gateway + "/v1/models").json()["data"]}
    details = cards["smollm2-135m-instruct"]["details"]
    assert details["default_adapter"] == "grounded-smollm2", details
    assert [Path(a["path"]).name for a in details["adapters"]] == ["grounded-smollm2"], details
    chat = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert chat.choices[0].message.content
    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["hello", "world"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    rerank = httpx.post(gateway + "/v1/rerank", json={"query": "cat", "documents": ["a cat", "a car"]}).json()
    assert [r["index"] for r in rerank["results"]] == [0, 1]


def test_shared_routes(gateway: str) -> None:
    assert httpx.get(gateway + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway + "/ready").json()
    assert ready["services"] == {"generation": "ready", "embeddings": "ready", "rag": "ready"}
    metrics = httpx.get(gateway + "/metrics").text
    assert 'service="generation"' in metrics and 'service="embeddings"' in metrics
    assert "inferag_generation_tokens_total" in metrics and "inferag_embeddings_inputs_total" in metrics
    err = httpx.post(gateway + "/v1/chat/completions", json={"model": "nope", "messages": []})
    assert err.status_code == 400 and set(err.json()["error"]) == {"message", "type", "param", "code"}
