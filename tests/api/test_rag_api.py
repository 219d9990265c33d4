"""The RAG routes through the in-process stack: real MiniLM embeddings, embedded Qdrant, a tiny generator."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.rag_stack import minimal_pdf, rag_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ERROR_KEYS = {"message", "type", "param", "code"}

DOCS = [
    {"id": "cats", "text": "Cats are small domesticated felines. They purr when content and sleep most of the day.",
     "metadata": {"topic": "animals", "year": 2021, "lang": "en"}},
    {"id": "sprocket", "text": "Part number ZQX-4471 is the kryptonite sprocket of the gearbox assembly.",
     "metadata": {"topic": "parts", "year": 2023, "lang": "en"}},
    {"id": "weather", "text": "Heavy rain and strong winds are expected along the coast tomorrow afternoon.",
     "metadata": {"topic": "weather", "year": 2024, "lang": "en"}},
    {"id": "bread", "text": "To bake bread, knead flour, water, salt and yeast, let the dough rise, then bake it.",
     "metadata": {"topic": "cooking", "year": 2022, "lang": "en"}},
]  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tiny_model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with rag_stack(tiny_model_dir, max_upload_bytes=64 * 1024, background_threshold_bytes=32 * 1024) as (c, _):
        resp = await c.post("/rag/collections/kb/documents", json={"documents": DOCS})
        assert resp.status_code == 200, resp.text
        yield c


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == ERROR_KEYS
    return error


async def chunk_ids(c: httpx.AsyncClient, collection: str, doc_id: str) -> list[str]:
    resp = await c.get(f"/rag/collections/{collection}/documents/{doc_id}")
    assert resp.status_code == 200, resp.text
    return [chunk["text"] for chunk in resp.json()["data"]]


# ---------------------------------------------------------------- collections and documents


async def test_collection_lifecycle(stack: httpx.AsyncClient) -> None:
    created = (await stack.post("/rag/collections", json={"name": "tmp-c"})).json()
    assert created["dimension"] == 384 and created["embed_model"] == "all-minilm-l6-v2" and created["points"] == 0
    names = {c["name"]: c for c in (await stack.get("/rag/collections")).json()["data"]}
    assert names["kb"]["documents"] == len(DOCS) and names["kb"]["points"] >= len(DOCS)
    assert (await stack.delete("/rag/collections/tmp-c")).json() == {"id": "tmp-c", "object": "collection",
                                                                      "deleted": True}  # fmt: skip
    assert_error(await stack.get("/rag/collections/tmp-c"), 404)
    assert_error(await stack.post("/rag/collections", json={"name": "bad name!"}), 400)
    models = {m["id"] for m in (await stack.get("/v1/models")).json()["data"]}
    assert "rag:kb" in models and "all-minilm-l6-v2" in models


async def test_reingest_replaces_and_delete_removes(stack: httpx.AsyncClient) -> None:
    long_v1 = " ".join(f"Version one sentence number {i} about apples." for i in range(120))
    r1 = await stack.post("/rag/collections/re/documents", json={"documents": [{"id": "d", "text": long_v1}]})
    assert r1.status_code == 200 and r1.json()["documents"][0]["chunks"] > 2
    v2 = "Version two is short and about pears."
    await stack.post("/rag/collections/re/documents", json={"documents": [{"id": "d", "text": v2}]})
    assert await chunk_ids(stack, "re", "d") == [v2]
    info = (await stack.get("/rag/collections/re")).json()
    assert (info["points"], info["documents"]) == (1, 1)
    listing = (await stack.get("/rag/collections/re/documents")).json()
    assert listing["total"] == 1 and listing["data"][0]["doc_id"] == "d"
    assert (await stack.delete("/rag/collections/re/documents/d")).json()["deleted"] is True
    assert (await stack.get("/rag/collections/re")).json()["points"] == 0
    assert_error(await stack.get("/rag/collections/re/documents/d"), 404)
    assert_error(await stack.delete("/rag/collections/re/documents/d"), 404)


async def test_content_hash_id_makes_ingest_idempotent(stack: httpx.AsyncClient) -> None:
    body = {"documents": [{"text": "The same text twice is the same document."}]}
    first = (await stack.post("/rag/collections/hash/documents", json=body)).json()
    second = (await stack.post("/rag/collections/hash/documents", json=body)).json()
    assert first["documents"][0]["doc_id"] == second["documents"][0]["doc_id"]
    assert (await stack.get("/rag/collections/hash")).json()["documents"] == 1


async def test_uploads_of_every_type(stack: httpx.AsyncClient) -> None:
    files = [
        ("files", ("notes.txt", b"Plain text notes about turbines.", "text/plain")),
        ("files", ("guide.md", b"# Guide\n\n## Install\n\nRun the installer.\n", "text/markdown")),
        ("files", ("page.html", b"<html><head><title>Page</title></head><body><p>Hello <b>HTML</b></p></body></html>",
                   "text/html")),
        ("files", ("paper.pdf", minimal_pdf("Photosynthesis turns light into sugar"), "application/pdf")),
    ]  # fmt: skip
    resp = await stack.post("/rag/collections/up/documents", files=files, data={"metadata": '{"team": "a"}'})
    assert resp.status_code == 200, resp.text
    docs = {d["source"]: d for d in resp.json()["documents"]}
    assert set(docs) == {"notes.txt", "guide.md", "page.html", "paper.pdf"}
    assert all(d["metadata"]["team"] == "a" for d in docs.values())
    assert docs["page.html"]["metadata"]["title"] == "Page" and docs["paper.pdf"]["metadata"]["pages"] == 1
    pdf = await chunk_ids(stack, "up", docs["paper.pdf"]["doc_id"])
    assert "Photosynthesis turns light into sugar" in pdf[0]
    md = (await stack.get(f"/rag/collections/up/documents/{docs['guide.md']['doc_id']}")).json()["data"]
    assert md[-1]["metadata"]["headings"] == ["Guide", "Install"]


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("virus.exe", b"MZ\x90\x00", 415),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 415),
        ("fake.pdf", b"just text", 415),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", 400),
        ("empty.txt", b"   \n ", 400),
        ("big.txt", b"x" * 70_000, 413),
    ],
)
async def test_bad_uploads_leave_nothing(stack: httpx.AsyncClient, name: str, data: bytes, status: int) -> None:
    collection = f"bad-{status}-{abs(hash(name)) % 1000}"
    ok = ("files", ("fine.txt", b"A fine file that must not be stored either.", "text/plain"))
    resp = await stack.post(
        f"/rag/collections/{collection}/documents", files=[ok, ("files", (name, data, "application/octet-stream"))]
    )
    assert_error(resp, status)
    info = await stack.get(f"/rag/collections/{collection}")
    assert info.status_code == 404 or info.json()["points"] == 0


async def test_background_job_reports_progress_and_per_file_errors(stack: httpx.AsyncClient) -> None:
    files = [("files", (f"f{i}.txt", f"Background document number {i} about comets.".encode(), "text/plain"))
             for i in range(5)]  # fmt: skip
    files.append(("files", ("broken.pdf", b"%PDF-1.4 garbage", "application/pdf")))
    resp = await stack.post("/rag/collections/jobs/documents", files=files, data={"background": "true"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    for _ in range(300):
        job = (await stack.get(f"/rag/jobs/{job['id']}")).json()
        if job["finished_at"] is not None:
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "partial" and job["documents_total"] == 6
    assert (job["documents_done"], job["documents_failed"]) == (5, 1) and job["chunks_done"] == 5
    assert job["errors"][0]["document"] == "broken.pdf" and job["errors"][0]["code"] == "corrupt_file"
    assert (await stack.get("/rag/collections/jobs")).json()["documents"] == 5
    assert_error(await stack.get("/rag/jobs/job-nope"), 404)


# ---------------------------------------------------------------- chunk and retrieve


@pytest.mark.parametrize("strategy", ["fixed", "overlap", "recursive", "markdown", "semantic"])
async def test_chunk_route(stack: httpx.AsyncClient, strategy: str) -> None:
    text = "# Title\n\n" + "\n\n".join(f"Paragraph {i}. " + "Some words here. " * 30 for i in range(6))
    resp = await stack.post("/rag/chunk", json={"text": text, "chunking": {"strategy": strategy, "chunk_size": 64}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["strategy"] == strategy and len(body["data"]) > 3
    for c in body["data"]:
        assert text[c["start"] : c["end"]] == c["text"] and 0 < c["tokens"] <= body["max_tokens"]
    assert_error(await stack.post("/rag/chunk", json={"text": "x", "chunking": {"chunk_size": 100000}}), 400)
    error = assert_error(await stack.post("/rag/chunk", json={"text": "x", "chunking": {"chunk_size": "abc"}}), 400)
    assert error["param"] == "chunking.chunk_size"


async def retrieve(c: httpx.AsyncClient, **body: Any) -> list[dict[str, Any]]:
    resp = await c.post("/rag/retrieve", json={"collection": "kb", **body})
    assert resp.status_code == 200, resp.text
    hits: list[dict[str, Any]] = resp.json()["data"]
    return hits


async def test_hybrid_finds_what_only_sparse_or_only_dense_finds(stack: httpx.AsyncClient) -> None:
    # An opaque part number: only the exact token matches (BM25); MiniLM has no meaning for it.
    sparse = await retrieve(stack, query="ZQX-4471", mode="sparse", top_k=1)
    assert sparse[0]["doc_id"] == "sprocket"
    hybrid = await retrieve(stack, query="ZQX-4471", mode="hybrid", top_k=2)
    assert "sprocket" in {h["doc_id"] for h in hybrid}
    # A paraphrase sharing no word with the document: only the dense vector matches it.
    query = "kittens napping"
    assert await retrieve(stack, query=query, mode="sparse", top_k=3) == []
    assert (await retrieve(stack, query=query, mode="dense", top_k=1))[0]["doc_id"] == "cats"
    assert (await retrieve(stack, query=query, mode="hybrid", top_k=1))[0]["doc_id"] == "cats"
    dbsf = await retrieve(stack, query=query, mode="hybrid", fusion="dbsf", top_k=1)
    assert dbsf[0]["doc_id"] == "cats"


async def test_filters(stack: httpx.AsyncClient) -> None:
    def ids(hits: list[dict[str, Any]]) -> set[str]:
        return {h["doc_id"] for h in hits}

    everything = "felines sprocket rain bread"
    assert ids(await retrieve(stack, query=everything, mode="dense", filter={"topic": "animals"})) == {"cats"}
    any_of = await retrieve(stack, query=everything, mode="dense", filter={"topic": {"any": ["parts", "weather"]}})
    assert ids(any_of) == {"sprocket", "weather"}
    ranged = await retrieve(stack, query=everything, mode="hybrid", filter={"year": {"gte": 2022, "lt": 2024}})
    assert ids(ranged) == {"sprocket", "bread"}
    assert ids(await retrieve(stack, query=everything, mode="dense", filter={"doc_id": "bread"})) == {"bread"}
    assert_error(await stack.post("/rag/retrieve", json={"collection": "kb", "query": "x", "filter": {"a": {"zz": 1}}}),
                 400)  # fmt: skip


async def test_retrieve_errors(stack: httpx.AsyncClient) -> None:
    assert_error(await stack.post("/rag/retrieve", json={"collection": "nope", "query": "x"}), 404)
    assert_error(await stack.post("/rag/retrieve", json={"collection": "kb", "query": ""}), 400)
    assert_error(await stack.post("/rag/retrieve", json={"collection": "kb", "query": "x", "top_k": 0}), 400)
    assert_error(await stack.post("/rag/retrieve", json={"query": "x"}), 400)
    assert_error(await stack.post("/rag/retrieve", content=b"{nope", headers={"content-type": "application/json"}), 400)


async def test_rerank_route(stack: httpx.AsyncClient) -> None:
    resp = await stack.post("/rag/rerank", json={"query": "purring pets", "documents": [DOCS[2]["text"],
                                                                                       DOCS[0]["text"]]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert [r["index"] for r in resp.json()["data"]] == [1, 0]
    hits = await retrieve(stack, query="gearbox part", mode="sparse", top_k=3)
    reranked = (await stack.post("/rag/rerank", json={"query": "gearbox part", "hits": hits, "top_n": 1})).json()
    assert len(reranked["data"]) == 1 and reranked["data"][0]["hit"]["doc_id"] == "sprocket"


# ---------------------------------------------------------------- answers


def numbers(text: str) -> set[int]:
    return {int(n) for group in re.findall(r"\[([\d,\s]+)\]", text) for n in group.split(",")}


async def test_query_answers_with_valid_citations_and_timings(stack: httpx.AsyncClient) -> None:
    body = {"collection": "kb", "query": "What is part ZQX-4471?", "max_tokens": 24, "seed": 1, "rerank": True}
    resp = await stack.post("/rag/query", json=body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["object"] == "rag.answer" and answer["sources"] and answer["answer"]
    assert numbers(answer["answer"]) <= {s["number"] for s in answer["sources"]}
    assert {c["number"] for c in answer["citations"]} == numbers(answer["answer"])
    assert {"embed", "retrieve", "rerank", "generate", "ttft", "total"} <= set(answer["timings"])
    assert answer["usage"]["completion_tokens"] > 0
    # no cross-encoder in this stack: by default the bi-encoder does not re-sort hybrid results
    plain = (await stack.post("/rag/query", json={**body, "rerank": None})).json()
    assert "rerank" not in plain["timings"] and plain["sources"][0]["doc_id"] == "sprocket"


async def test_query_without_relevant_sources_says_it_does_not_know(stack: httpx.AsyncClient) -> None:
    body = {"collection": "kb", "query": "quantum chromodynamics lattice", "score_threshold": 0.9}
    answer = (await stack.post("/rag/query", json=body)).json()
    assert answer["sources"] == [] and answer["citations"] == [] and "don't know" in answer["answer"]
    assert "generate" not in answer["timings"]


async def test_query_stream_event_order(stack: httpx.AsyncClient) -> None:
    body = {"collection": "kb", "query": "Tell me about cats.", "max_tokens": 16, "stream": True}
    async with stack.stream("POST", "/rag/query", json=body) as resp:
        assert resp.status_code == 200
        events = [json.loads(line[6:]) async for line in resp.aiter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "retrieval" and kinds[-2:] == ["citations", "done"]
    assert set(kinds[1:-2]) == {"delta"}
    assert events[0]["sources"] and "ttft" in events[-1]["timings"]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert numbers(text) <= {s["number"] for s in events[0]["sources"]}


async def test_query_errors(stack: httpx.AsyncClient) -> None:
    assert_error(await stack.post("/rag/query", json={"collection": "missing", "query": "x"}), 404)
    assert_error(await stack.post("/rag/query", json={"collection": "kb", "query": "  "}), 400)
    assert_error(await stack.post("/rag/query", json={"collection": "kb"}), 400)
    resp = await stack.post("/rag/query", json={"collection": "missing", "query": "x", "stream": True})
    assert_error(resp, 404)


async def test_rag_model_through_the_openai_sdk(stack: httpx.AsyncClient) -> None:
    client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=stack)
    chat = await client.chat.completions.create(
        model="rag:kb", messages=[{"role": "user", "content": "What is ZQX-4471?"}], max_tokens=16
    )
    assert chat.choices[0].message.content and chat.model == "rag:kb"
    extra = chat.model_extra or {}
    assert "sources" in extra and isinstance(extra["sources"], list)
    stream = await client.chat.completions.create(
        model="rag:kb", messages=[{"role": "user", "content": "cats?"}], max_tokens=8, stream=True
    )
    pieces = [chunk async for chunk in stream]
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="rag:missing", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("model", "status"),
    [
        ("rag:../../etc", 404),  # was a pydantic ValidationError inside the route (connection reset on the stack)
        ("rag:kb,a b", 404),
        ("rag:" + "x" * 64, 404),
        ("rag:,,", 404),
        ("rag:" + ",".join(f"c{i}" for i in range(17)), 400),  # more than 16 collections
    ],
)
async def test_rag_model_names_are_refused_in_the_error_body(stack: httpx.AsyncClient, model: str, status: int) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "What is part ZQX-4471?"}], "max_tokens": 4}
    error = assert_error(await stack.post("/v1/chat/completions", json=body), status)
    assert error["param"] == "model" and error["code"] in ("model_not_found", "too_many_collections")


async def test_ingestion_waits_out_a_full_embeddings_queue(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The embeddings batcher's 429 (queue full) was the document's failure; now it is retried as asked."""
    caplog.set_level("INFO", logger="services.common.upstream")
    overloaded = {"max_queue": 2, "batch_size": 1, "max_wait_ms": 0}
    async with rag_stack(tiny_model_dir, embeddings=overloaded, upstream_retries=6) as (c, _):
        text = " ".join(f"Sentence number {i} talks about sprockets and gearboxes." for i in range(40))
        bodies = [{"documents": [{"id": f"d{i}", "text": text}], "chunking": {"chunk_size": 16}} for i in range(4)]
        answers = await asyncio.gather(*(c.post("/rag/collections/busy/documents", json=b) for b in bodies))
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers if r.status_code != 200]
        listed = (await c.get("/rag/collections/busy/documents")).json()
        assert listed["total"] == 4
    assert any("try 2 again" in r.getMessage() for r in caplog.records), "the queue never filled: nothing tested"
