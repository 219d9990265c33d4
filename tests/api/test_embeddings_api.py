"""The embeddings API in-process (real MiniLM, splade-tiny and a tiny local cross-encoder): results and errors."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from pydantic import SecretStr

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

MAX_INPUTS = 16


@pytest.fixture(scope="module")
def reranker_dir() -> Path:
    return tiny_cross_encoder_dir()


@pytest.fixture(scope="module")
def st_model() -> Any:
    return reference_encoder()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(reranker_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """MiniLM + the tiny cross-encoder + splade-tiny; a 20 ms batching window so concurrent requests meet."""
    cfg = settings(rerank_model=str(reranker_dir), rerank_model_name=RERANK, max_inputs=MAX_INPUTS, max_wait_ms=20)
    async with app_client(cfg) as pair:
        yield pair


@pytest.fixture
def client(app: tuple[httpx.AsyncClient, Any]) -> httpx.AsyncClient:
    return app[0]


@pytest.fixture
def service(app: tuple[httpx.AsyncClient, Any]) -> EmbeddingsService:
    svc: EmbeddingsService = app[1].state.embeddings
    return svc


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


async def wait_for(condition: Any) -> None:
    for _ in range(1000):  # 10 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def decode(item: dict[str, Any]) -> np.ndarray:
    emb = item["embedding"]
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4")
    return np.asarray(emb, dtype=np.float32)


# ---------------------------------------------------------------- models and ops


async def test_models_list_dimension_and_limits(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    cards = {m["id"]: m for m in r.json()["data"]}
    assert set(cards) == {EMBED, RERANK, SPARSE}
    dense = cards[EMBED]
    assert dense["capabilities"] == ["embeddings"] and dense["dimension"] == 384
    assert dense["max_input_tokens"] == 256 and "256 word pieces" in dense["truncation"]
    assert cards[RERANK]["capabilities"] == ["rerank"] and cards[RERANK]["rerank_method"] == "cross-encoder"
    assert cards[SPARSE]["capabilities"] == ["sparse-embeddings"] and cards[SPARSE]["dimension"] == 30522
    assert cards[SPARSE]["max_input_tokens"] == 512


async def test_health_ready_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    await client.post("/v1/embeddings", json={"model": EMBED, "input": "metrics"})
    text = (await client.get("/metrics")).text
    assert "inferag_embeddings_batch_requests_bucket" in text
    assert 'inferag_http_requests_total{method="POST",route="/v1/embeddings",service="embeddings",status="200"}' in text


async def test_not_ready_until_loaded_and_load_errors_reported() -> None:
    async with contextlib_app(settings(embed_model="/nonexistent/model", sparse_model="none")) as client:
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert (await client.get("/health")).status_code == 200
        assert_openai_error(await client.post("/v1/embeddings", json={"model": EMBED, "input": "x"}), 503)


def contextlib_app(cfg: Any) -> Any:
    """The app with its lifespan running, not waiting for the models (they fail to load here)."""
    import contextlib

    from services.embeddings.app import build_app

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[httpx.AsyncClient]:
        application = build_app(cfg)
        async with application.router.lifespan_context(application):
            for _ in range(200):
                if application.state.load_error is not None:
                    break
                await asyncio.sleep(0.05)
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client

    return run()


async def test_api_key(app: tuple[httpx.AsyncClient, Any]) -> None:
    client, application = app
    application.state.settings.api_key = SecretStr("sesame")
    try:
        assert_openai_error(await client.post("/v1/embeddings", json={"model": EMBED, "input": "x"}), 401)
        ok = await client.post(
            "/v1/embeddings", json={"model": EMBED, "input": "x"}, headers={"Authorization": "Bearer sesame"}
        )
        assert ok.status_code == 200
        assert (await client.get("/ready")).status_code == 200
    finally:
        application.state.settings.api_key = None


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_embeddings_equal_sentence_transformers(
    client: httpx.AsyncClient, st_model: Any, encoding_format: str
) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS, "encoding_format": encoding_format})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    reference = st_model.encode(TEXTS)
    for item, ref in zip(body["data"], reference, strict=True):
        vec = decode(item)
        assert vec.shape == (384,)
        assert cosine(vec, ref) >= 0.9999
    tokens = sum(min(len(st_model.tokenizer(t)["input_ids"]), 256) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


async def test_single_string_and_token_arrays(client: httpx.AsyncClient, st_model: Any) -> None:
    text = TEXTS[2]
    ids = st_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    one = (await client.post("/v1/embeddings", json={"model": EMBED, "input": text})).json()
    flat = (await client.post("/v1/embeddings", json={"model": EMBED, "input": ids})).json()
    nested = (await client.post("/v1/embeddings", json={"model": EMBED, "input": [ids, ids[:3]]})).json()
    assert len(one["data"]) == len(flat["data"]) == 1 and len(nested["data"]) == 2
    assert cosine(decode(one["data"][0]), decode(flat["data"][0])) >= 0.9999
    assert cosine(decode(one["data"][0]), decode(nested["data"][0])) >= 0.9999
    assert one["usage"]["prompt_tokens"] == len(ids) + 2


@pytest.mark.parametrize("dimensions", [64, 128, 384])
async def test_dimensions_truncate_and_renormalize(client: httpx.AsyncClient, st_model: Any, dimensions: int) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS[:3], "dimensions": dimensions})
    assert r.status_code == 200, r.text
    reference = st_model.encode(TEXTS[:3])[:, :dimensions]
    for item, ref in zip(r.json()["data"], reference, strict=True):
        vec = decode(item)
        assert vec.shape == (dimensions,)
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-5
        assert cosine(vec, ref) >= 0.9999


async def test_truncate_false_refuses_only_over_long(client: httpx.AsyncClient) -> None:
    ok = await client.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS[:5], "truncate": False})
    assert ok.status_code == 200
    err = assert_openai_error(
        await client.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS, "truncate": False}), 400, "input"
    )
    assert err["code"] == "context_length_exceeded" and "input[5]" in err["message"] and "256" in err["message"]


async def test_concurrent_requests_share_batches(client: httpx.AsyncClient, service: EmbeddingsService) -> None:
    before = (service.dense_batcher.stats.batches, service.dense_batcher.stats.shared)
    texts = [f"request number {i} about vectors" for i in range(12)]
    replies = await asyncio.gather(*[client.post("/v1/embeddings", json={"model": EMBED, "input": t}) for t in texts])
    assert all(r.status_code == 200 for r in replies)
    batches = service.dense_batcher.stats.batches - before[0]
    shared = service.dense_batcher.stats.shared - before[1]
    assert batches < len(texts), batches
    assert shared >= 1
    alone = (await client.post("/v1/embeddings", json={"model": EMBED, "input": texts})).json()["data"]
    for r, a in zip(replies, alone, strict=True):
        assert cosine(decode(r.json()["data"][0]), decode(a)) >= 0.9999


async def test_full_queue_answers_429_with_retry_after(client: httpx.AsyncClient, service: EmbeddingsService) -> None:
    batcher = service.dense_batcher
    gate = threading.Event()
    blocker = service.executor.submit(gate.wait, 30)  # hold the model thread
    limit, batcher.max_queue = batcher.max_queue, 2
    try:
        first = asyncio.create_task(client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"]}))
        await wait_for(lambda: batcher.in_model == 2)  # taken by the worker, which waits for the model thread
        second = asyncio.create_task(client.post("/v1/embeddings", json={"model": EMBED, "input": ["c", "d"]}))
        await wait_for(lambda: batcher.queued == 2)
        r = await client.post("/v1/embeddings", json={"model": EMBED, "input": "e"})
        err = assert_openai_error(r, 429)
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
    finally:
        batcher.max_queue = limit
        gate.set()
    assert (await first).status_code == 200 and (await second).status_code == 200
    blocker.result(5)


# ---------------------------------------------------------------- rerank


async def test_rerank_equals_cross_encoder_predict(client: httpx.AsyncClient) -> None:
    reference = reference_cross_encoder().predict([(QUERY, d) for d in DOCUMENTS])
    r = await client.post("/v1/rerank", json={"model": RERANK, "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == RERANK and body["method"] == "cross-encoder" and body["id"].startswith("rerank-")
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(-reference, kind="stable"))
    for x in results:
        assert abs(x["relevance_score"] - float(reference[x["index"]])) < 1e-5
        assert "document" not in x
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert body["usage"]["total_tokens"] > 0


async def test_rerank_top_n_return_documents_and_alias(client: httpx.AsyncClient) -> None:
    docs: list[Any] = [{"text": d} for d in DOCUMENTS[:3]] + DOCUMENTS[3:]
    full = (await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).json()["results"]
    r = await client.post(
        "/rerank", json={"model": RERANK, "query": QUERY, "documents": docs, "top_n": 2, "return_documents": True}
    )
    assert r.status_code == 200, r.text
    top = r.json()["results"]
    assert [x["index"] for x in top] == [x["index"] for x in full[:2]]
    assert all(x["document"] == {"text": DOCUMENTS[x["index"]]} for x in top)
    many = await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 50})
    assert len(many.json()["results"]) == len(DOCUMENTS)


async def test_bi_encoder_rerank_covers_the_whole_passage(st_model: Any) -> None:
    """The laptop default: the embedding model's cosine, best window of a long passage."""
    answer = "Paris is the capital and most populous city of France."
    long_doc = "Filler sentence about nothing in particular. " * 60 + answer
    docs = ["Bananas are rich in potassium.", long_doc, "Berlin is the capital of Germany.", "", answer]
    async with app_client(settings(sparse_model="none")) as (client, _):
        models = (await client.get("/v1/models")).json()["data"]
        assert [m["capabilities"] for m in models] == [["embeddings", "rerank"]]
        assert models[0]["rerank_method"] == "bi-encoder-cosine"
        r = await client.post("/v1/rerank", json={"model": EMBED, "query": QUERY, "documents": docs})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["method"] == "bi-encoder-cosine" and body["model"] == EMBED
    scores = {x["index"]: x["relevance_score"] for x in body["results"]}
    q = st_model.encode(QUERY)
    for i in (0, 2, 4):  # short passages: exactly the cosine of their embeddings
        assert abs(scores[i] - cosine(q, st_model.encode(docs[i]))) < 1e-4
    # the answer sits past the first 256 word pieces: truncation alone would miss it
    assert scores[1] > cosine(q, st_model.encode(long_doc)) + 0.2
    assert scores[1] > scores[0]
    assert body["results"][0]["index"] in (1, 4)


# ---------------------------------------------------------------- sparse


async def test_sparse_embeddings_equal_splade(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sparse-embeddings", json={"input": TEXTS[:3], "return_tokens": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == SPARSE and len(body["data"]) == 3
    for item, ref in zip(body["data"], splade_reference(TEXTS[:3]), strict=True):
        vec = item["embedding"]
        assert item["object"] == "sparse_embedding"
        assert vec["indices"] == sorted(ref)
        assert np.allclose(vec["values"], [ref[i] for i in vec["indices"]], atol=1e-5)
        assert len(item["tokens"]) == len(vec["indices"])
    assert "cat" in body["data"][0]["tokens"]
    plain = (await client.post("/v1/sparse-embeddings", json={"model": SPARSE, "input": "hybrid search"})).json()
    assert "tokens" not in plain["data"][0] and plain["usage"]["prompt_tokens"] == 4


# ---------------------------------------------------------------- bad input

BAD: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("/v1/embeddings", {"model": EMBED, "input": ""}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": []}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": ["ok", ""]}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": ["x"] * (MAX_INPUTS + 1)}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": ["x"] * 2049}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": "word " * 300, "truncate": False}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": [[1, 2, 999999]]}, 400, "input"),
    ("/v1/embeddings", {"model": EMBED, "input": [[1, -2]]}, 400, None),
    ("/v1/embeddings", {"model": EMBED, "input": [1.5, "x"]}, 400, None),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ("/v1/embeddings", {"model": SPARSE, "input": "x"}, 400, "model"),
    ("/v1/embeddings", {"input": "x"}, 400, "model"),
    ("/v1/embeddings", {"model": EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/embeddings", {"model": EMBED, "input": "x", "dimensions": 0}, 400, "dimensions"),
    ("/v1/embeddings", {"model": EMBED, "input": "x", "dimensions": 385}, 400, "dimensions"),
    ("/v1/rerank", {"query": QUERY, "documents": []}, 400, "documents"),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, "query"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, 400, "top_n"),
    ("/v1/rerank", {"model": "nope", "query": QUERY, "documents": ["a"]}, 404, "model"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": ["a"]}, 400, "model"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"] * 1001}, 400, "documents"),
    ("/v1/sparse-embeddings", {"input": []}, 400, "input"),
    ("/v1/sparse-embeddings", {"input": "word " * 600, "truncate": False}, 400, "input"),
    ("/v1/sparse-embeddings", {"model": EMBED, "input": "x"}, 400, "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD)
async def test_bad_input_gives_openai_error(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    assert_openai_error(await client.post(path, json=body), status, param)


async def test_invalid_json_and_unknown_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert assert_openai_error(r, 400)["code"] == "invalid_json"
    assert_openai_error(await client.get("/v1/nothing"), 404)
