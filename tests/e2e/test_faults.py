"""Faults against real processes: SIGKILL during ingestion, a dependency going away and back,
clients leaving mid-stream, SIGTERM during a stream, and a stream refused by a full generation service.

Each test starts its own processes on free ports and temporary folders (the packaged SmolLM2
and all-MiniLM-L6-v2 on the CPU).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.settings import CommonSettings
from tests.procs import SIGKILL, SIGTERM, Server, gateway_env, started
from tests.servers import free_port

pytestmark = pytest.mark.slow

# uvicorn re-raises SIGTERM once its graceful shutdown is done, so a clean stop may end "by SIGTERM".
CLEAN_EXIT = (0, -SIGTERM)

WORDS = [
    "vector", "index", "chunk", "embedding", "rerank", "hybrid", "sparse", "dense", "query", "answer", "citation",
    "source", "model", "token", "batch", "engine", "stream", "latency", "memory", "shard", "replica", "snapshot",
]  # fmt: skip


def doc_text(i: int) -> str:
    """A deterministic document of 20 to 400 words: one to a few chunks."""
    rng = random.Random(i)
    sentences = []
    for _ in range(rng.randint(2, 40)):
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    return f"Document {i}. " + " ".join(sentences)


def sse_payloads(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[6:]


def engine_load(base: str) -> tuple[float, float]:
    """(running, waiting) requests of the generation engine, from /metrics."""
    values = {"running": 0.0, "waiting": 0.0}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        for key in values:
            if line.startswith(f"inferag_generation_requests_{key}"):
                values[key] += float(line.rsplit(" ", 1)[1])
    return values["running"], values["waiting"]


def wait_engine_idle(base: str, within: float) -> float:
    start = time.monotonic()
    while (load := engine_load(base)) != (0, 0):
        assert time.monotonic() - start < within, f"engine still busy after {within}s: running, waiting = {load}"
        time.sleep(0.1)
    return time.monotonic() - start


def is_error_body(resp: httpx.Response) -> bool:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(err) >= {"message", "type", "param", "code"}


# ---------------------------------------------------------------- SIGKILL during ingestion


def expected_chunks(base: str, text: str, cache: dict[str, list[Any]]) -> list[Any]:
    """The chunks ingestion makes of `text` (the service's own chunker, default parameters)."""
    if text not in cache:
        chunks = httpx.post(f"{base}/rag/chunk", json={"text": text}, timeout=30).json()["data"]
        cache[text] = [(c["start"], c["end"], c["text"]) for c in chunks]
    return cache[text]


def check_store_whole(base: str, collection: str, cache: dict[str, list[Any]]) -> dict[str, int]:
    """Every listed document is whole (its chunks are those its text makes); no orphan points.
    Returns {doc_id: chunks}."""
    listing = httpx.get(f"{base}/rag/collections/{collection}/documents", params={"limit": 1000}, timeout=30).json()
    assert listing["total"] == len(listing["data"])
    chunks: dict[str, int] = {}
    for info in listing["data"]:
        doc_id = info["doc_id"]
        i = int(doc_id.split("-")[1])
        text = doc_text(i)
        detail = httpx.get(f"{base}/rag/collections/{collection}/documents/{doc_id}", timeout=30).json()
        stored = sorted(detail["data"], key=lambda c: c["chunk_index"])
        expected = expected_chunks(base, text, cache)
        assert info["chunks"] == len(stored) == len(expected), doc_id
        assert [c["chunk_index"] for c in stored] == list(range(len(stored))), doc_id
        assert [(c["start"], c["end"], c["text"]) for c in stored] == expected, doc_id
        assert info["characters"] == len(text), doc_id
        chunks[doc_id] = len(stored)
    coll = httpx.get(f"{base}/rag/collections/{collection}", timeout=30).json()
    assert coll["documents"] == len(chunks)
    assert coll["points"] == sum(chunks.values()), "points that belong to no whole document"
    return chunks


def raw_point_count(folder: Path, collection: str) -> int:
    """Every point of the collection in the store's folder, staged or live (the server must be stopped)."""
    from services.rag.store.embedded import EmbeddedBackend

    backend = EmbeddedBackend(folder)
    try:
        return backend.count(collection)
    finally:
        backend.close()


def test_sigkill_during_ingestion_leaves_whole_documents_and_the_job_reruns_idempotently(tmp_path: Path) -> None:
    folder, collection, n = tmp_path / "qdrant", "crash", 120
    cache: dict[str, list[Any]] = {}
    docs = [{"id": f"doc-{i:03d}", "text": doc_text(i), "source": f"doc-{i:03d}.txt"} for i in range(n)]
    job_body = {"documents": docs, "background": True}
    port = free_port()
    server = Server("services.gateway.app", gateway_env(port, folder), port, name="crash-gateway").start()
    try:
        base = server.wait_ready().base
        resp = httpx.post(f"{base}/rag/collections/{collection}/documents", json=job_body, timeout=60)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        while True:
            job = httpx.get(f"{base}/rag/jobs/{job_id}", timeout=10).json()
            if job["documents_done"] >= 10:
                break
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.02)
        done_before_kill = job["documents_done"]
        assert server.kill() == -SIGKILL
    finally:
        server.stop()
    assert done_before_kill < n, "the job finished before the kill; nothing was tested"

    server = Server("services.gateway.app", gateway_env(port, folder), port, name="crash-gateway").start()
    try:
        base = server.wait_ready(timeout=300).base
        after_crash = check_store_whole(base, collection, cache)
        # what the job reported done was committed: acknowledged progress survives the kill
        assert len(after_crash) >= done_before_kill
        assert len(after_crash) < n

        resp = httpx.post(f"{base}/rag/collections/{collection}/documents", json=job_body, timeout=60)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"{base}/rag/jobs/{job_id}", timeout=10).json())["finished_at"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded" and job["documents_done"] == n, job
        after_rerun = check_store_whole(base, collection, cache)
        assert sorted(after_rerun) == sorted(d["id"] for d in docs)
        clean_points = sum(len(expected_chunks(base, d["text"], cache)) for d in docs)
        assert sum(after_rerun.values()) == clean_points
        assert server.stop() in CLEAN_EXIT
    finally:
        server.stop()
    # nothing staged or superseded left behind either: the raw store holds exactly the live chunks
    assert raw_point_count(folder, collection) == clean_points


# ---------------------------------------------------------------- a dependency goes away and comes back


class Prober(threading.Thread):
    """Sends `/rag/retrieve` in a loop and records (time, status, body or exception, seconds)."""

    def __init__(self, base: str, collection: str):
        super().__init__(daemon=True)
        self.base, self.collection = base, collection
        self.results: list[tuple[float, int | str, Any, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        body = {"collection": self.collection, "query": "hybrid retrieval with rerank", "top_k": 3}
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    resp = client.post("/rag/retrieve", json=body)
                    detail: Any = resp.json() if resp.headers.get("content-type", "").startswith("application/json") \
                        else resp.text  # fmt: skip
                    self.results.append((start, resp.status_code, detail, time.monotonic() - start))
                except httpx.HTTPError as exc:
                    self.results.append((start, type(exc).__name__, str(exc), time.monotonic() - start))
                time.sleep(0.1)

    def latest(self) -> tuple[float, int | str, Any, float] | None:
        return self.results[-1] if self.results else None

    def wait_for(self, status: int, after: float, within: float) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for start, code, detail, _ in reversed(self.results):
                if start >= after and code == status:
                    return detail
            time.sleep(0.1)
        raise AssertionError(f"no {status} from /rag/retrieve within {within}s; last: {self.results[-3:]}")


def test_rag_answers_503_while_embeddings_are_down_and_recovers_by_itself(tmp_path: Path) -> None:
    emb_port, gen_port, rag_port = free_port(), free_port(), free_port()
    quiet = {"INFERAG_LOG_LEVEL": "warning"}
    emb_env = {**quiet, "INFERAG_EMB_PORT": str(emb_port)}
    gen_env = {**quiet, "INFERAG_GEN_PORT": str(gen_port), "INFERAG_GEN_DEFAULT_MAX_TOKENS": "16"}
    rag_env = {**quiet, "INFERAG_RAG_PORT": str(rag_port), "INFERAG_RAG_QDRANT_PATH": str(tmp_path / "qdrant"),
               "INFERAG_RAG_EMBEDDINGS_URL": f"http://127.0.0.1:{emb_port}",
               "INFERAG_RAG_GENERATION_URL": f"http://127.0.0.1:{gen_port}"}  # fmt: skip
    embeddings = Server("services.embeddings.app", emb_env, emb_port, name="dep-embeddings").start()
    generation = Server("services.generation.app", gen_env, gen_port, name="dep-generation").start()
    rag = Server("services.rag.app", rag_env, rag_port, name="dep-rag").start()
    prober = None
    try:
        embeddings.wait_ready()
        generation.wait_ready()
        base = rag.wait_ready().base
        docs = [{"id": f"d{i}", "text": doc_text(i)} for i in range(3)]
        resp = httpx.post(f"{base}/rag/collections/dep/documents", json={"documents": docs}, timeout=120)
        assert resp.status_code == 200, resp.text
        prober = Prober(base, "dep")
        prober.start()
        prober.wait_for(200, after=0, within=30)

        stopped_at = time.monotonic()
        embeddings.stop()
        error = prober.wait_for(503, after=stopped_at, within=15)
        assert "embeddings" in error["error"]["message"], error
        assert error["error"]["type"] == "service_unavailable", error
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == 503 and is_error_body(ready), ready.text
        assert "embeddings" in ready.json()["error"]["message"], ready.text

        embeddings = Server("services.embeddings.app", emb_env, emb_port, name="dep-embeddings").start()
        back_at = time.monotonic()
        embeddings.wait_ready()
        prober.wait_for(200, after=back_at, within=30)
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "RAG /ready did not come back after the embeddings service did"
            time.sleep(0.2)
        assert rag.alive(), "RAG restarted or died"
    finally:
        if prober is not None:
            prober.stopping.set()
            prober.join(timeout=60)
        for server in (rag, embeddings, generation):
            server.stop()
    statuses = {code for _, code, _, _ in prober.results}
    assert statuses <= {200, 503}, f"answers other than 200/503: {statuses}: {prober.results[-5:]}"
    slowest = max(seconds for *_, seconds in prober.results)
    assert slowest < 10, f"a retrieve took {slowest:.1f}s: the dependency's absence must not hang requests"
    for _, code, detail, _ in prober.results:
        if code == 503:
            assert isinstance(detail, dict) and set(detail["error"]) >= {"message", "type", "param", "code"}


# ---------------------------------------------------------------- clients leaving, full generation


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The one-command stack with four generation slots and a small collection."""
    folder = tmp_path_factory.mktemp("faults-stack")
    port = free_port()
    env = gateway_env(port, folder / "qdrant", INFERAG_GEN_MAX_INFLIGHT="4", INFERAG_GEN_MAX_BATCH_SIZE="4")
    with started("services.gateway.app", env, port=port, name="faults-gateway") as server:
        docs = [{"id": f"d{i}", "text": doc_text(i)} for i in range(4)]
        resp = httpx.post(f"{server.base}/rag/collections/kb/documents", json={"documents": docs}, timeout=120)
        assert resp.status_code == 200, resp.text
        yield server.base


def long_chat(model: str = "smollm2-135m-instruct") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 1000, "ignore_eos": True, "stream": True}  # fmt: skip


def test_clients_leaving_mid_stream_leave_no_engine_request(stack: str) -> None:
    requests = [
        ("/v1/chat/completions", long_chat()),
        ("/v1/chat/completions", long_chat()),
        ("/rag/query", {"collection": "kb", "query": "Tell me everything about shards.", "max_tokens": 1000,
                        "stream": True}),
        ("/v1/chat/completions", {**long_chat("rag:kb"), "ignore_eos": None}),
    ]  # fmt: skip
    with httpx.Client(base_url=stack, timeout=120) as client, contextlib.ExitStack() as streams:
        held: list[Any] = []
        for path, body in requests:
            resp = streams.enter_context(
                client.stream("POST", path, json={k: v for k, v in body.items() if v is not None})
            )
            assert resp.status_code == 200, resp.read()
            held.append(sse_payloads(resp.iter_lines()))  # kept: a collected iterator closes its connection
            for _ in range(3):
                next(held[-1])
        running, waiting = engine_load(stack)
        assert running + waiting >= 2, "the long chats were not both generating: the test would prove nothing"
    # every connection is closed here, mid-stream
    wait_engine_idle(stack, within=5)


def test_rag_stream_refused_by_a_full_generation_service_is_a_429_or_ends_with_an_error_event(stack: str) -> None:
    with httpx.Client(base_url=stack, timeout=120) as client, contextlib.ExitStack() as streams:
        held = []  # the line iterators: a dropped one is collected, which closes its connection
        for _ in range(4):  # every generation slot
            resp = streams.enter_context(client.stream("POST", "/v1/chat/completions", json=long_chat()))
            assert resp.status_code == 200
            held.append(sse_payloads(resp.iter_lines()))
            next(held[-1])
        body = {"collection": "kb", "query": "What is a shard?", "max_tokens": 8, "stream": True}
        start = time.monotonic()
        with client.stream("POST", "/rag/query", json=body) as resp:
            if resp.status_code == 429:
                assert resp.headers.get("retry-after") and time.monotonic() - start < 1
                return
            assert resp.status_code == 200
            try:
                events = [json.loads(p) for p in sse_payloads(resp.iter_lines())]
            except httpx.RemoteProtocolError as exc:
                pytest.fail(f"stream cut without an error event: {exc}")
    assert events[-1]["type"] in ("error", "done") and any(e["type"] == "error" for e in events), events


# ---------------------------------------------------------------- SIGTERM during a stream


def test_sigterm_lets_the_stream_finish_then_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    server = Server("services.gateway.app", gateway_env(port, tmp_path / "qdrant", INFERAG_SHUTDOWN_GRACE_S="30"),
                    port, name="sigterm-gateway").start()  # fmt: skip
    try:
        base = server.wait_ready().base
        body = {**long_chat(), "max_tokens": 64}
        with httpx.Client(base_url=base, timeout=60) as client, client.stream("POST", "/v1/chat/completions",
                                                                             json=body) as resp:  # fmt: skip
            assert resp.status_code == 200
            payloads = sse_payloads(resp.iter_lines())
            received = [next(payloads), next(payloads)]
            signalled = time.monotonic()
            server.signal(SIGTERM)
            time.sleep(0.3)
            # no new connections once SIGTERM is in
            assert server.alive()
            with pytest.raises(httpx.ConnectError):
                httpx.get(base + "/health", timeout=5)
            received += list(payloads)
        assert received[-1] == "[DONE]", received[-3:]
        chunks = [json.loads(p) for p in received[:-1]]
        assert not any("error" in c for c in chunks), chunks
        assert chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-1]
        assert server.proc is not None
        assert server.proc.wait(timeout=40) in CLEAN_EXIT, server.log_tail()
        assert time.monotonic() - signalled < 32
    finally:
        server.stop()


@pytest.mark.skipif("shutdown_drain_s" not in CommonSettings.model_fields, reason="no INFERAG_SHUTDOWN_DRAIN_S")
def test_sigterm_turns_readiness_false_while_requests_are_still_served(tmp_path: Path) -> None:
    port = free_port()
    env = gateway_env(port, tmp_path / "qdrant", INFERAG_SHUTDOWN_DRAIN_S="3")
    server = Server("services.gateway.app", env, port, name="drain-gateway").start()
    try:
        base = server.wait_ready().base
        server.signal(SIGTERM)
        signalled = time.monotonic()
        codes = []
        while time.monotonic() - signalled < 2 and 503 not in codes:
            codes.append(httpx.get(base + "/ready", timeout=5).status_code)
            time.sleep(0.1)
        assert httpx.get(base + "/health", timeout=5).status_code == 200, "requests must still be served"
        assert 503 in codes, f"/ready answered {codes} during the drain"
        assert server.proc is not None
        assert server.proc.wait(timeout=40) in CLEAN_EXIT, server.log_tail()
    finally:
        server.stop()
