"""The Python SDK against the started stack: every method of the sync and async clients, typed errors,
the order of streamed events, and 429 retries with backoff on a stack with one generation slot.

The official `openai` package is the client of the OpenAI-compatible part (chat, embeddings, models,
`rag:<collection>` chat); the SDK does not wrap it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from inferag_client import (
    AsyncInferagClient,
    AuthenticationError,
    BadRequest,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    InferagClient,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetrievalEvent,
    UnsupportedMediaType,
)
from inferag_client.models import DocumentIn, IngestResult, Job
from tests.e2e.stack import stack, write_docs

pytestmark = pytest.mark.slow

KEY = "sk-sdk-test"
KB = "sdk-kb"


# One generation slot: a second concurrent generation is answered 429 (Retry-After: 1).
STACK_ENV = {"INFERAG_API_KEY": KEY, "INFERAG_GEN_MAX_INFLIGHT": "1", "INFERAG_RAG_MAX_UPLOAD_BYTES": "65536"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # SDK_STACK: a stack started with STACK_ENV elsewhere (tests/e2e/test_client_install.py runs these tests
    # from a venv holding only the client distribution, which cannot start one).
    if os.environ.get("SDK_STACK"):
        yield os.environ["SDK_STACK"]
        return
    with stack(tmp_path_factory.mktemp("sdk"), **STACK_ENV) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[InferagClient]:
    with InferagClient(base, KEY) as c:
        yield c


@pytest.fixture(scope="module")
def kb(client: InferagClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A collection with the three test documents, uploaded as files."""
    paths = write_docs(tmp_path_factory.mktemp("docs"))
    result = client.documents.upload(KB, list(paths.values()), metadata={"suite": "sdk"})
    assert isinstance(result, IngestResult) and len(result.documents) == 3 and result.chunks >= 3
    assert {d.source for d in result.documents} == set(paths)
    return paths


def test_ops_and_models(client: InferagClient) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready and set(ready.services) >= {"generation", "embeddings", "rag"}
    ids = {m.id: m for m in client.models().data}
    assert "smollm2-135m-instruct" in ids and "all-minilm-l6-v2" in ids


def test_key_from_environment_and_wrong_key(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAG_BASE_URL", base)
    monkeypatch.setenv("INFERAG_API_KEY", KEY)
    with InferagClient() as from_env:
        assert from_env.collections.list().object == "list"
    with InferagClient(base, "wrong") as wrong, pytest.raises(AuthenticationError) as info:
        wrong.collections.list()
    assert info.value.status == 401 and info.value.type == "authentication_error"


def test_collections_lifecycle(client: InferagClient) -> None:
    info = client.collections.create("sdk-life")
    assert info.name == "sdk-life" and info.documents == 0 and info.dimension == 384
    # The same create again is a no-op (409 only for a collection of another embedding model).
    assert client.collections.create("sdk-life").name == "sdk-life"
    assert client.collections.get("sdk-life").points == 0
    assert "sdk-life" in {c.name for c in client.collections.list().data}
    assert client.collections.delete("sdk-life").deleted
    with pytest.raises(NotFound):
        client.collections.get("sdk-life")


def test_documents_and_jobs(client: InferagClient, kb: dict[str, Path]) -> None:
    texts = ["Berlin is the capital of Germany.", DocumentIn(id="rome", text="Rome is the capital of Italy.")]
    result = client.documents.ingest("sdk-docs", texts, metadata={"lang": "en"})
    assert isinstance(result, IngestResult) and {d.doc_id for d in result.documents} >= {"rome"}

    job = client.documents.ingest("sdk-docs", [DocumentIn(id="madrid", text="Madrid is in Spain.")], background=True)
    assert isinstance(job, Job)
    seen: list[str] = []
    done = client.jobs.wait(job.id, on_progress=lambda j: seen.append(j.status), poll_interval=0.1, timeout=120)
    assert done.status == "succeeded" and done.documents_done == 1 and seen[-1] == "succeeded"
    assert client.jobs.get(job.id).status == "succeeded"
    assert job.id in {j.id for j in client.jobs.list().data}

    listing = client.documents.list("sdk-docs")
    assert listing.total == 3 and {"rome", "madrid"} <= {d.doc_id for d in listing.data}
    page = client.documents.list("sdk-docs", limit=1, offset=1)
    assert len(page.data) == 1 and page.total == 3
    detail = client.documents.get("sdk-docs", "rome")
    assert detail.collection == "sdk-docs" and "Rome" in detail.data[0].text
    assert client.documents.delete("sdk-docs", "rome").deleted
    with pytest.raises(NotFound):
        client.documents.get("sdk-docs", "rome")

    uploaded = client.documents.list(KB)
    assert uploaded.total == 3 and all(d.metadata.get("suite") == "sdk" for d in uploaded.data)
    client.collections.delete("sdk-docs")


def test_upload_errors(client: InferagClient, tmp_path: Path) -> None:
    odd = tmp_path / "table.xyz"
    odd.write_bytes(b"\x00\x01binary")
    with pytest.raises(UnsupportedMediaType) as info:
        client.documents.upload("sdk-errors", odd)
    assert info.value.status == 415
    big = tmp_path / "big.txt"
    big.write_text("word " * 40_000)
    with pytest.raises(PayloadTooLarge):
        client.documents.upload("sdk-errors", big)
    with pytest.raises(BadRequest) as bad:
        client.chunk("some text", chunking={"strategy": "no-such-strategy"})
    assert bad.value.status == 400 and bad.value.type == "invalid_request_error"


def test_chunk_retrieve_rerank(client: InferagClient, kb: dict[str, Path]) -> None:
    chunks = client.chunk("First paragraph.\n\nSecond paragraph. " * 40, chunking={"chunk_size": 32})
    assert len(chunks.data) > 1 and all(c.tokens <= 32 for c in chunks.data)
    hits = client.retrieve("Where is the Eiffel Tower?", collection=KB, top_k=3)
    assert hits.data[0].source == "paris.html" and hits.timings
    for mode in ("dense", "sparse"):
        assert client.retrieve("vector database", collection=KB, mode=mode, top_k=2).data[0].source == "qdrant.md"
    ranked = client.rerank("low-rank adapters", ["The Eiffel Tower.", "LoRA trains low-rank adapters."])
    assert [r.index for r in ranked.data] == [1, 0]
    reordered = client.rerank("Eiffel Tower", hits=hits.data, top_n=2)
    assert len(reordered.data) == 2 and reordered.data[0].hit is not None
    assert reordered.data[0].hit.source == "paris.html"


def test_query_answer_with_sources(client: InferagClient, kb: dict[str, Path]) -> None:
    answer = client.query("Where is the Eiffel Tower?", collection=KB, max_tokens=24, rerank_top_n=2)
    assert answer.answer and answer.sources and answer.sources[0].source == "paris.html"
    assert answer.usage.completion_tokens > 0 and "total" in answer.timings


def test_query_stream_yields_events_in_order(client: InferagClient, kb: dict[str, Path]) -> None:
    with client.query_stream("What does Qdrant store?", collection=KB, max_tokens=24, rerank_top_n=2) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "retrieval" and kinds[-2:] == ["citations", "done"], kinds
    assert set(kinds[1:-2]) == {"delta"} and len(kinds) > 3
    first, last = events[0], events[-1]
    assert isinstance(first, RetrievalEvent) and first.sources[0].source == "qdrant.md"
    assert all(isinstance(e, DeltaEvent) for e in events[1:-2])
    assert isinstance(events[-2], CitationsEvent)
    assert isinstance(last, DoneEvent) and last.usage is not None and last.usage.completion_tokens > 0
    assert "total" in last.timings
    assert "".join(e.text for e in events if isinstance(e, DeltaEvent)).strip()


def test_agent(client: InferagClient, kb: dict[str, Path]) -> None:
    """Every run searches first and ends grounded: an answer citing what it saw, or "I don't know" with the
    sources (unsupported); a run stopped by a bound, or that never searched, fails here."""
    question = "Where is the Eiffel Tower?"
    result = client.agent(question, collection=KB, max_steps=2, max_tokens=48)
    assert result.steps and result.steps[0].tool == "search_knowledge_base"
    assert result.steps[0].arguments == {"query": question} and result.steps[0].observation
    assert result.stopped_reason in ("answer", "unsupported") and result.usage.total_tokens > 0, result
    assert result.answer and result.citations
    for c in result.citations:
        assert c.quote is not None and c.text[c.quote.start - c.start : c.quote.end - c.start] == c.quote.text
    events = list(client.agent_stream("What does Qdrant store?", collection=KB, max_steps=2, max_tokens=48))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["tool_call", "tool_result"] and kinds[-2:] == ["citations", "done"], kinds
    assert set(kinds) <= {"thought", "tool_call", "tool_result", "delta", "citations", "done"}
    assert getattr(events[-1], "stopped_reason", None) in ("answer", "unsupported")


def test_openai_package_against_the_stack(base: str, kb: dict[str, Path]) -> None:
    with InferagClient(base, KEY) as client:
        oai = openai.OpenAI(**client.openai_options())
    chat = oai.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert chat.choices[0].message.content
    emb = oai.embeddings.create(model="all-minilm-l6-v2", input=["hello"])
    assert len(emb.data[0].embedding) == 384
    rag = oai.chat.completions.create(
        model=f"rag:{KB}", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}], max_tokens=24
    )
    # `sources` (an extra field) lists the sources the answer cites; the tiny model may cite none.
    sources = (rag.model_extra or {}).get("sources")
    assert rag.choices[0].message.content and isinstance(sources, list)


def _hold_generation(base: str, seconds_ready: threading.Event, stop: threading.Event) -> None:
    """Occupy the one generation slot with a long stream until `stop` (or its 400 tokens)."""
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=300) as response:
        for _ in response.iter_lines():
            seconds_ready.set()
            if stop.is_set():
                break


def test_429_is_retried_with_backoff(base: str, kb: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    started, stop = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_generation, args=(base, started, stop), daemon=True)
    holder.start()
    assert started.wait(120), "the holding stream never started"

    # Without retries the 429 surfaces as RateLimited with the server's Retry-After.
    with InferagClient(base, KEY, max_retries=0) as impatient, pytest.raises(RateLimited) as info:
        impatient.query("Where is the Eiffel Tower?", collection=KB, max_tokens=8)
    assert info.value.status == 429 and info.value.retry_after is not None and info.value.retry_after >= 1

    # With retries the same call waits (Retry-After), the slot frees up, and it succeeds.
    threading.Timer(2.5, stop.set).start()
    caplog.set_level(logging.INFO, logger="inferag.sdk")
    t0 = time.monotonic()
    with InferagClient(base, KEY, max_retries=8) as patient:
        answer = patient.query("Where is the Eiffel Tower?", collection=KB, max_tokens=8)
    waited = time.monotonic() - t0
    holder.join(60)
    retries = [r.getMessage() for r in caplog.records if r.name == "inferag.sdk"]
    assert answer.answer and retries, "the call should have been retried"
    assert all("HTTP 429" in m and "/rag/query" in m for m in retries), retries
    assert waited >= len(retries) * 1.0  # each retry slept the server's Retry-After (1 s)


def test_async_client_same_surface(base: str, kb: dict[str, Path], tmp_path: Path) -> None:
    async def run() -> None:
        async with AsyncInferagClient(base, KEY) as client:
            assert (await client.health()).status == "ok" and (await client.ready()).ready
            assert any(m.id == "all-minilm-l6-v2" for m in (await client.models()).data)
            await client.collections.create("sdk-async")
            assert (await client.collections.get("sdk-async")).documents == 0
            assert "sdk-async" in {c.name for c in (await client.collections.list()).data}
            ingested = await client.documents.ingest("sdk-async", [DocumentIn(id="a", text="Oslo is in Norway.")])
            assert isinstance(ingested, IngestResult)
            path = tmp_path / "note.md"
            path.write_text("# Note\n\nHelsinki is the capital of Finland.")
            job = await client.documents.upload("sdk-async", path, background=True)
            assert isinstance(job, Job)
            polls: list[int] = []

            async def progress(j: Job) -> None:
                polls.append(j.documents_done)

            assert (await client.jobs.wait(job.id, on_progress=progress, poll_interval=0.1)).status == "succeeded"
            assert (await client.jobs.get(job.id)).id == job.id and (await client.jobs.list()).data
            assert (await client.documents.list("sdk-async")).total == 2
            assert (await client.documents.get("sdk-async", "a")).data[0].text.startswith("Oslo")
            assert (await client.documents.delete("sdk-async", "a")).deleted
            assert (await client.chunk("a b c")).data
            hits = await client.retrieve("capital of Finland", collection="sdk-async", top_k=1)
            assert hits.data[0].source == "note.md"
            assert (await client.rerank("Finland", hits=hits.data)).data[0].hit is not None
            assert (await client.query("Capital of Finland?", collection="sdk-async", max_tokens=8)).sources
            stream = await client.query_stream("Capital of Finland?", collection="sdk-async", max_tokens=8)
            kinds = [e.type async for e in stream]
            assert kinds[0] == "retrieval" and kinds[-1] == "done"
            agent = await client.agent("Capital of Finland?", collection="sdk-async", max_steps=1, max_tokens=32)
            assert agent.stopped_reason in ("answer", "unsupported") and agent.steps[0].tool == "search_knowledge_base"
            agent_events = [e.type async for e in await client.agent_stream("Hi", collection="sdk-async", max_steps=1)]
            assert agent_events[:2] == ["tool_call", "tool_result"] and agent_events[-1] == "done"
            assert (await client.collections.delete("sdk-async")).deleted
            with pytest.raises(NotFound):
                await client.collections.get("sdk-async")

    asyncio.run(run())


def test_collection_snapshot_and_restore(client: InferagClient, kb: dict[str, Path], tmp_path: Path) -> None:
    path = client.collections.snapshot(KB, tmp_path / "kb.snapshot.tar.gz")
    assert path.stat().st_size > 0
    import tarfile

    with tarfile.open(path) as tar:
        assert "inferag-snapshot.json" in tar.getnames()
    # this stack takes bodies of 64 KiB at most: a snapshot upload over it is the typed 413
    with pytest.raises(PayloadTooLarge):
        client.collections.restore(path, "sdk-restored")
    with pytest.raises(NotFound):
        client.collections.snapshot("no-such-collection", tmp_path / "x.tar.gz")
