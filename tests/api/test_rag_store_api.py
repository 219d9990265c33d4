"""The store through the in-process stack: snapshots and restore over HTTP, persisted jobs, filter bounds."""

from __future__ import annotations

import asyncio
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.rag.ingest import JobManager
from services.rag.service import RagService
from services.rag.store import Point
from tests.rag_stack import rag_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCS = [{"id": f"doc-{i}", "text": f"Document {i} is about {topic}.", "metadata": {"n": i}}
        for i, topic in enumerate(["pumps", "valves", "filters", "gauges", "seals", "bearings"])]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, RagService]]:
    folder = tmp_path_factory.mktemp("store-api")
    async with rag_stack(tiny_model_dir, qdrant_path=str(folder / "qdrant"), data_dir=str(folder)) as (c, gateway):
        resp = await c.post("/rag/collections/kb/documents", json={"documents": DOCS})
        assert resp.status_code == 200, resp.text
        rag = next(a.state.rag for a in gateway.services.values() if getattr(getattr(a, "state", None), "rag", None))
        yield c, rag


async def test_a_snapshot_downloaded_and_restored_under_another_name_holds_the_same_documents(
        served: tuple[httpx.AsyncClient, RagService], tmp_path: Path) -> None:
    c, _ = served
    resp = await c.post("/rag/collections/kb/snapshot")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/gzip"
    snapshot = tmp_path / "kb.snapshot.tar.gz"
    snapshot.write_bytes(resp.content)
    with tarfile.open(snapshot) as tar:
        assert {"inferag-snapshot.json", "parts/collection.snapshot", "parts/_docs__.snapshot"} <= set(tar.getnames())
    restored = await c.post("/rag/collections/restore", data={"name": "kb-copy"},
                            files={"file": ("kb.snapshot.tar.gz", snapshot.read_bytes(), "application/gzip")})
    assert restored.status_code == 200, restored.text
    original = (await c.get("/rag/collections/kb")).json()
    assert {k: v for k, v in restored.json().items() if k != "name"} == {k: v for k, v in original.items()
                                                                         if k != "name"}
    docs = (await c.get("/rag/collections/kb-copy/documents")).json()
    assert [d["doc_id"] for d in docs["data"]] == [d["id"] for d in DOCS]
    for name in ("kb", "kb-copy"):
        hits = (await c.post("/rag/retrieve", json={"collection": name, "query": "valves", "top_k": 1})).json()
        assert hits["data"][0]["doc_id"] == "doc-1"
    again = await c.post("/rag/collections/restore", files={"file": ("x", snapshot.read_bytes(), "application/gzip")})
    assert again.status_code == 409 and set(again.json()["error"]) == {"message", "type", "param", "code"}
    bad = await c.post("/rag/collections/restore", files={"file": ("x", b"not a tar", "application/gzip")})
    assert bad.status_code == 400, bad.text
    assert (await c.post("/rag/collections/nope/snapshot")).status_code == 404


async def test_a_range_filter_with_a_huge_integer_is_a_400(served: tuple[httpx.AsyncClient, RagService]) -> None:
    c, _ = served
    for flt in ({"n": {"gte": 10**30}}, {"n": 10**20}, {"n": {"lt": 10**400}}):
        resp = await c.post("/rag/retrieve", json={"collection": "kb", "query": "pumps", "filter": flt})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "filter"


async def wait_finished(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (job := (await c.get(f"/rag/jobs/{job_id}")).json())["finished_at"] is None:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    return job  # type: ignore[no-any-return]


async def test_jobs_live_in_the_store_where_another_replica_sees_them(
        served: tuple[httpx.AsyncClient, RagService]) -> None:
    c, rag = served
    resp = await c.post("/rag/collections/jobs/documents", json={"documents": DOCS, "background": True})
    assert resp.status_code == 202, resp.text
    job = await wait_finished(c, resp.json()["id"])
    assert job["status"] == "succeeded" and job["documents_done"] == len(DOCS)
    replica = JobManager(rag.ingestor, rag.settings, rag.metrics)  # another process's job manager, same store
    try:
        seen = await replica.get(job["id"])
        assert seen.model_dump(mode="json") == job
        assert job["id"] in {j.id for j in await replica.all()}
    finally:
        await replica.close()


async def test_a_job_cut_short_by_shutdown_is_failed_never_succeeded(
        served: tuple[httpx.AsyncClient, RagService]) -> None:
    _, rag = served
    manager = JobManager(rag.ingestor, rag.settings, rag.metrics)
    many = [rag_doc(i) for i in range(200)]
    job = await manager.submit("cut", many, None)
    deadline = time.monotonic() + 60
    while job.documents_done == 0 and time.monotonic() < deadline:  # noqa: ASYNC110 -- polling the job, as a client
        await asyncio.sleep(0.05)
    await manager.close()  # the service shuts down mid-job
    assert job.status == "failed" and job.documents_done < len(many)
    assert job.errors[-1].code == "interrupted"
    later = JobManager(rag.ingestor, rag.settings, rag.metrics)  # after a restart
    try:
        assert (await later.get(job.id)).status == "failed"
    finally:
        await later.close()


async def test_a_job_whose_process_died_reads_as_failed(served: tuple[httpx.AsyncClient, RagService]) -> None:
    c, rag = served
    manager = JobManager(rag.ingestor, rag.settings, rag.metrics)
    try:
        name = await manager._records()
        payload = {"id": "job_dead", "object": "job", "collection": "kb", "status": "running", "documents_total": 10,
                   "documents_done": 3, "documents_failed": 0, "chunks_done": 3, "errors": [],
                   "created_at": time.time() - 600, "finished_at": None, "owner": "gone",
                   "heartbeat": time.time() - 600}
        from services.rag.ingest import _job_point

        await rag.store.upsert_points(name, [Point(id=_job_point("job_dead"), payload=payload)])
        job = (await c.get("/rag/jobs/job_dead")).json()
        assert job["status"] == "failed" and job["errors"][-1]["code"] == "interrupted", job
    finally:
        await manager.close()


def rag_doc(i: int) -> Any:
    from services.rag.parsing import ParsedDocument

    return ParsedDocument(f"Document {i} of a long job, about pumps and valves number {i}.", "text", None, {},
                          f"long-{i}")
