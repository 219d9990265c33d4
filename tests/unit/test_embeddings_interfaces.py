"""One test suite, two implementations: the in-process client and the HTTP client must behave the same.

Both run against the same loaded models (MiniLM, a tiny local cross-encoder, splade-tiny):
in-process through the serving layer, HTTP through the app over an httpx transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from services.common.errors import InvalidRequest, NotFound
from services.embeddings.client import (
    Embedder,
    HttpEmbeddings,
    InProcessEmbeddings,
    Reranker,
    SparseEmbedder,
    SparseVector,
    open_embeddings,
)
from services.embeddings.serving import EmbeddingsService
from tests.embedding_models import (
    DOCUMENTS,
    EMBED,
    QUERY,
    RERANK,
    SPARSE,
    TEXTS,
    app_client,
    cosine,
    reference_cross_encoder,
    reference_encoder,
    settings,
    splade_reference,
    tiny_cross_encoder_dir,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_INPUTS = 8

Client = InProcessEmbeddings | HttpEmbeddings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    cfg = settings(rerank_model=str(tiny_cross_encoder_dir()), rerank_model_name=RERANK, max_inputs=MAX_INPUTS)
    async with app_client(cfg) as pair:
        yield pair


@pytest_asyncio.fixture(params=["in-process", "http"], loop_scope="session")
async def impl(request: pytest.FixtureRequest, app: tuple[httpx.AsyncClient, Any]) -> AsyncIterator[Client]:
    client, application = app
    if request.param == "in-process":
        service: EmbeddingsService = application.state.embeddings
        yield InProcessEmbeddings(service)
    else:
        http = await HttpEmbeddings.connect("http://test", client=client)
        yield http
        await http.aclose()


async def test_implements_the_protocols(impl: Client) -> None:
    assert isinstance(impl, Embedder) and isinstance(impl, Reranker) and isinstance(impl, SparseEmbedder)
    assert (impl.embed_model, impl.dimension, impl.max_input_tokens) == (EMBED, 384, 256)
    assert (impl.rerank_model, impl.rerank_method) == (RERANK, "cross-encoder")
    assert impl.sparse_model == SPARSE


async def test_embed_equals_sentence_transformers(impl: Client) -> None:
    vectors = await impl.embed(TEXTS)
    assert len(vectors) == len(TEXTS) and all(len(v) == 384 for v in vectors)
    for vec, ref in zip(vectors, reference_encoder().encode(TEXTS), strict=True):
        assert cosine(vec, ref) >= 0.9999
    assert await impl.embed([]) == []


async def test_embed_more_texts_than_one_request_takes(impl: Client) -> None:
    texts = [f"text number {i}" for i in range(3 * MAX_INPUTS + 1)]
    vectors = await impl.embed(texts)
    assert len(vectors) == len(texts)
    assert cosine(vectors[-1], reference_encoder().encode(texts[-1])) >= 0.9999


async def test_rerank_follows_the_cross_encoder(impl: Client) -> None:
    reference = reference_cross_encoder().predict([(QUERY, d) for d in DOCUMENTS])
    ranked = await impl.rerank(QUERY, DOCUMENTS)
    assert [i for i, _ in ranked] == list(np.argsort(-reference, kind="stable"))
    assert all(abs(score - float(reference[i])) < 1e-5 for i, score in ranked)
    assert await impl.rerank(QUERY, DOCUMENTS, top_n=2) == ranked[:2]
    assert await impl.rerank(QUERY, []) == []


async def test_sparse_equals_splade(impl: Client) -> None:
    vectors = await impl.sparse(TEXTS[:3])
    assert all(isinstance(v, SparseVector) for v in vectors)
    for vec, ref in zip(vectors, splade_reference(TEXTS[:3]), strict=True):
        assert vec.indices == sorted(ref)
        assert np.allclose(vec.values, [ref[i] for i in vec.indices], atol=1e-5)


async def test_errors_are_domain_errors(impl: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        await impl.embed(["fine", ""])
    assert info.value.param == "input"
    with pytest.raises(InvalidRequest):
        await impl.rerank("", DOCUMENTS)
    # over-long inputs are truncated by default, not refused
    assert len((await impl.embed(["word " * 1000]))[0]) == 384


async def test_both_implementations_agree(app: tuple[httpx.AsyncClient, Any]) -> None:
    client, application = app
    local = InProcessEmbeddings(application.state.embeddings)
    remote = await HttpEmbeddings.connect("http://test", client=client)
    assert np.allclose(await local.embed(TEXTS[:4]), await remote.embed(TEXTS[:4]), atol=1e-6)
    assert await local.rerank(QUERY, DOCUMENTS) == await remote.rerank(QUERY, DOCUMENTS)
    assert await local.sparse(TEXTS[:2]) == await remote.sparse(TEXTS[:2])


async def test_open_embeddings_chooses_by_configuration() -> None:
    local = await open_embeddings(None, settings=settings(sparse_model="none", rerank_model="none"))
    try:
        assert isinstance(local, InProcessEmbeddings)
        assert len((await local.embed(["hello"]))[0]) == 384
        with pytest.raises(NotFound):
            await local.rerank(QUERY, DOCUMENTS)
        with pytest.raises(NotFound):
            await local.sparse(["hello"])
    finally:
        await local.aclose()
