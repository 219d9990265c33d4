"""The started embeddings service, driven by the official `openai` SDK, LangChain's OpenAIEmbeddings and httpx."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from services.embeddings.client import HttpEmbeddings, open_embeddings
from tests.embedding_models import (
    DOCUMENTS,
    EMBED,
    QUERY,
    RERANK,
    SPARSE,
    TEXTS,
    cosine,
    minilm_path,
    reference_cross_encoder,
    reference_encoder,
    tiny_cross_encoder_dir,
)
from tests.servers import free_port, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """MiniLM, the tiny cross-encoder and splade-tiny, as users run the service (plus a 20 ms batching window)."""
    port = free_port()
    env = {
        "INFERAG_EMB_PORT": str(port),
        "INFERAG_EMB_RERANK_MODEL": str(tiny_cross_encoder_dir()),
        "INFERAG_EMB_RERANK_MODEL_NAME": RERANK,
        "INFERAG_EMB_MAX_WAIT_MS": "20",
        "INFERAG_EMB_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
    }
    with running("services.embeddings.app", env, port=port, timeout=180) as base:
        yield base


def batch_requests(base: str) -> tuple[float, float]:
    """(model calls, model calls that served one request only) of the dense model, from /metrics."""
    text = httpx.get(base + "/metrics").text
    labels = f'model="{EMBED}"'
    count = re.search(rf"^inferag_embeddings_batch_requests_count\{{{labels}\}} (\S+)$", text, re.M)
    single = re.search(rf'^inferag_embeddings_batch_requests_bucket\{{le="1.0",{labels}\}} (\S+)$', text, re.M)
    return (float(count.group(1)) if count else 0.0), (float(single.group(1)) if single else 0.0)


def test_openai_sdk_float_base64_and_dimensions(server: str) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    assert {m.id for m in client.models.list().data} == {EMBED, RERANK, SPARSE}
    reference = reference_encoder().encode(TEXTS)
    # the SDK asks for base64 when encoding_format is not given, and decodes it itself
    for fmt in ("float", "base64", None):
        kwargs = {"encoding_format": fmt} if fmt else {}
        r = client.embeddings.create(model=EMBED, input=TEXTS, **kwargs)  # type: ignore[arg-type]
        assert [d.index for d in r.data] == list(range(len(TEXTS)))
        if fmt == "base64":
            vectors = [np.frombuffer(__import__("base64").b64decode(d.embedding), "<f4") for d in r.data]
        else:
            vectors = [np.asarray(d.embedding) for d in r.data]
        for vec, ref in zip(vectors, reference, strict=True):
            assert cosine(vec, ref) >= 0.9999
        assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    short = client.embeddings.create(model=EMBED, input="hello world", dimensions=96)
    assert len(short.data[0].embedding) == 96
    assert abs(float(np.linalg.norm(short.data[0].embedding)) - 1) < 1e-5


def test_openai_sdk_errors(server: str) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=EMBED, input=[])
    assert bad.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:
        client.embeddings.create(model=EMBED, input="word " * 300, extra_body={"truncate": False})
    assert long.value.code == "context_length_exceeded"


def test_concurrent_sdk_requests_share_batches(server: str) -> None:
    texts = [f"concurrent request {i} on hybrid retrieval" for i in range(16)]

    async def run() -> list[list[float]]:
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused")
        replies = await asyncio.gather(*[client.embeddings.create(model=EMBED, input=t) for t in texts])
        await client.close()
        return [r.data[0].embedding for r in replies]

    before = batch_requests(server)
    vectors = asyncio.run(run())
    calls, single = (a - b for a, b in zip(batch_requests(server), before, strict=True))
    assert calls < len(texts), calls  # 16 requests, fewer model calls
    assert calls - single >= 1  # at least one call served several requests at once
    for vec, ref in zip(vectors, reference_encoder().encode(texts), strict=True):
        assert cosine(vec, ref) >= 0.9999


def test_langchain_openai_embeddings(server: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    # the setting LangChain documents for OpenAI-compatible servers: send the texts as they are
    server_args: dict[str, Any] = {"model": EMBED, "base_url": server + "/v1", "api_key": "unused"}
    lc = OpenAIEmbeddings(**server_args, check_embedding_ctx_length=False)
    reference = reference_encoder().encode(TEXTS)
    docs = lc.embed_documents(TEXTS)
    assert all(cosine(v, r) >= 0.9999 for v, r in zip(docs, reference, strict=True))
    assert cosine(lc.embed_query(TEXTS[0]), reference[0]) >= 0.9999
    adocs = asyncio.run(lc.aembed_documents(TEXTS[:3]))
    assert all(cosine(v, r) >= 0.9999 for v, r in zip(adocs, reference[:3], strict=True))
    # its length-safe mode, with the model's own tokenizer instead of tiktoken (offline): short texts unchanged
    safe = OpenAIEmbeddings(
        **server_args, tiktoken_enabled=False, tiktoken_model_name=minilm_path(), embedding_ctx_length=254
    )
    for vec, ref in zip(safe.embed_documents(TEXTS[:4]), reference, strict=False):
        assert cosine(vec, ref) >= 0.9999


def test_rerank_and_sparse_over_http(server: str) -> None:
    reference = reference_cross_encoder().predict([(QUERY, d) for d in DOCUMENTS])
    for path in ("/v1/rerank", "/rerank"):
        body = {"model": RERANK, "query": QUERY, "documents": DOCUMENTS, "top_n": 3, "return_documents": True}
        r = httpx.post(server + path, json=body)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == list(np.argsort(-reference, kind="stable"))[:3]
        assert all(abs(x["relevance_score"] - float(reference[x["index"]])) < 1e-5 for x in results)
        assert all(x["document"]["text"] == DOCUMENTS[x["index"]] for x in results)
    sparse = httpx.post(server + "/v1/sparse-embeddings", json={"model": SPARSE, "input": ["hybrid search"]})
    assert sparse.status_code == 200 and sparse.json()["data"][0]["embedding"]["indices"]


def test_http_client_against_the_server(server: str) -> None:
    async def run() -> None:
        client = await open_embeddings(server)
        assert isinstance(client, HttpEmbeddings)
        try:
            assert client.dimension == 384 and client.rerank_method == "cross-encoder"
            vectors = await client.embed(TEXTS[:2])
            assert cosine(vectors[0], reference_encoder().encode(TEXTS[0])) >= 0.9999
            ranked = await client.rerank(QUERY, DOCUMENTS, top_n=2)
            assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
            assert (await client.sparse(["hybrid search"]))[0].indices
        finally:
            await client.aclose()

    asyncio.run(run())
