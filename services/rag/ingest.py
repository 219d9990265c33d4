"""Ingestion: parsed documents → chunks → dense and sparse vectors → the store, and background jobs.

A document is stored whole or not at all (the store's replace is atomic per document).
A request is checked before anything is written: every document is chunked first, so a
bad parameter or an empty document fails the request with nothing stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferag_protocol.graph import GraphMode
from inferag_protocol.rag import Chunk, DocumentInfo, IngestResult, Job, JobError
from services.common.errors import InferagError, InvalidRequest, NotFound, Overloaded
from services.embeddings.client import Embedder

from .bm25 import BM25Encoder
from .chunking import Chunker, ChunkingParams, parse_chunking
from .graph.service import GraphService
from .graph.types import SETTING
from .metrics import RagMetrics
from .parsing import FetchOptions, ParsedDocument, ParseOptions, fetch_documents, parse_upload
from .settings import RagSettings
from .store import DocumentWrite, Point, VectorStore

log = logging.getLogger(__name__)

KEEP_FINISHED_JOBS = 1000
FORGET_SLACK = 100
# Documents a job stores per write (one embedding call and one store write for all of them).
JOB_BATCH = 16
# A running job's record is re-saved this often; one not saved for STALE_JOB_S belongs to a dead process.
HEARTBEAT_S = 10.0
STALE_JOB_S = 60.0
_JOB_NAMESPACE = uuid.UUID("0e0b8a7c-51f4-4a9e-b2f7-2f6c4b1d9e35")


@dataclass
class Upload:
    """A file as received, or a URL to fetch, parsed when its turn comes (in a job, a bad file fails alone).

    Parsing blocks (PDF text, OCR, a fetch): call it in a worker thread. One file may give
    several documents (a mail and its attachments, JSON records).
    """

    filename: str
    data: bytes
    doc_id: str | None = None
    metadata: dict[str, Any] | None = None
    options: ParseOptions = field(default_factory=ParseOptions)
    url: str | None = None
    fetch: FetchOptions = field(default_factory=FetchOptions)

    def parse(self) -> list[ParsedDocument]:
        if self.url is not None:
            docs = fetch_documents(self.url, self.fetch, self.options, self.doc_id, param="documents.url")
        else:
            docs = parse_upload(self.filename, self.data, self.options, self.doc_id)
        for doc in docs:
            doc.metadata = {**doc.metadata, **(self.metadata or {})}
        return docs

    @property
    def name(self) -> str:
        return self.doc_id or self.filename


class Ingestor:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        chunker: Chunker,
        sparse: BM25Encoder,
        settings: RagSettings,
        metrics: RagMetrics,
        graph: GraphService | None = None,
    ):
        self.store, self.embedder, self.chunker, self.sparse = store, embedder, chunker, sparse
        self.settings, self.metrics, self.graph = settings, metrics, graph

    def chunking(self, params: dict[str, Any] | None, fmt: str = "text") -> ChunkingParams:
        """The request's chunking over the service defaults (markdown documents split on headings)."""
        params = dict(params or {})
        base: dict[str, Any] = {"strategy": "markdown" if fmt == "markdown" else self.settings.chunk_strategy}
        strategy = params.get("strategy", base["strategy"])
        if "chunk_size" not in params:
            base["chunk_size"] = self.settings.chunk_size
        size = params.get("chunk_size", self.settings.chunk_size)
        # a size that is not a number is left for the validation to refuse with a 400
        if strategy in ("recursive", "markdown") and "chunk_overlap" not in params and isinstance(size, int):
            base["chunk_overlap"] = min(self.settings.chunk_overlap, size // 2)
        return parse_chunking({**base, **params})

    async def ensure_collection(self, name: str, graph: GraphMode | None = None) -> None:
        """Create the collection for this embedding model on first use (with a knowledge graph made as `graph`
        says, default `graph_default`); refuse one made for another model."""
        try:
            await self.store.check_embedding(name, self.embedder.embed_model, self.embedder.dimension)
        except NotFound:  # create_collection is idempotent, and a Conflict if another model won a race
            await self.store.create_collection(
                name, dimension=self.embedder.dimension, embed_model=self.embedder.embed_model, sparse_model="bm25",
                metadata={SETTING: graph or self.settings.graph_default},
            )

    async def prepare(self, doc: ParsedDocument, chunking: dict[str, Any] | None) -> list[Chunk]:
        chunks = await doc.chunk(self.chunker, self.chunking(chunking, doc.format))
        if not chunks:
            raise InvalidRequest(f"Document '{doc.source or doc.resolved_id()}' has no text.", param="documents")
        return chunks

    async def store_document(self, collection: str, doc: ParsedDocument, chunks: list[Chunk]) -> DocumentInfo:
        (info,) = await self.store_documents(collection, [(doc, chunks)])
        return info

    async def store_documents(self, collection: str,
                              prepared: Sequence[tuple[ParsedDocument, list[Chunk]]]) -> list[DocumentInfo]:
        """Embed every chunk of the documents in one call and store them in one batch write (one staged
        upsert, one commit, one publish: the store's per-document steps cost more than the embedding); their
        knowledge graph is extracted meanwhile and written after them, in one write too."""
        texts = [c.text for _, chunks in prepared for c in chunks]
        # the graph's extraction runs beside the embedding (in a thread, or on the generation service)
        extraction = asyncio.ensure_future(self.graph.extract(collection, texts)) if self.graph else None
        try:
            dense = await self.embedder.embed(texts)
            sparse = await asyncio.to_thread(self.sparse.encode_documents, texts)
            extracted = await extraction if extraction else None
        except BaseException:
            if extraction:
                extraction.cancel()
            raise
        writes, at = [], 0
        for doc, chunks in prepared:
            n = len(chunks)
            writes.append(DocumentWrite(doc_id=doc.resolved_id(), source=doc.source, metadata=doc.metadata,
                                        chunks=chunks, dense=dense[at:at + n], sparse=sparse[at:at + n]))
            at += n
        infos = await self.store.write_documents(collection, writes)
        if self.graph and extracted is not None:
            await self.graph.documents_stored(collection, [(info, len(chunks)) for info, (_, chunks) in
                                                            zip(infos, prepared, strict=True)], extracted)
        self.metrics.documents.labels("ok").inc(len(infos))
        self.metrics.chunks.inc(len(texts))
        return infos

    async def ingest(
        self, collection: str, docs: list[ParsedDocument], chunking: dict[str, Any] | None
    ) -> IngestResult:
        """Store every document (chunked first, so a bad one fails the request before any write)."""
        await self.ensure_collection(collection)
        prepared = [(doc, await self.prepare(doc, chunking)) for doc in docs]
        stored = await self.store_documents(collection, prepared)
        return IngestResult(collection=collection, documents=stored, chunks=sum(d.chunks for d in stored))


class JobManager:
    """Background ingestion: bounded (429 over `max_queued_jobs`), progress per batch, errors per file.

    Jobs are kept in the store (the hidden collection `_jobs__`), so every replica answers for every
    job and a restart keeps them. A running job's record carries a heartbeat; one whose heartbeat
    stopped (its process crashed) reads as `failed`, and a job cut short by shutdown is `failed` with
    an `interrupted` error: never `succeeded`. Submitting the same documents again finishes the work
    (re-ingesting a document replaces it whole).
    """

    def __init__(self, ingestor: Ingestor, settings: RagSettings, metrics: RagMetrics):
        self.ingestor, self.metrics = ingestor, metrics
        self.store = ingestor.store
        self.max_queued = settings.max_queued_jobs
        self.batch = JOB_BATCH
        self._slots = asyncio.Semaphore(settings.max_jobs)
        self._jobs: dict[str, Job] = {}  # this process's unfinished jobs
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._owner = uuid.uuid4().hex
        self._collection: str | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def _records(self) -> str:
        if self._collection is None:
            self._collection = await self.store.create_hidden("jobs", indexes={"status": "keyword"})
            self._heartbeat = asyncio.create_task(self._beat(), name="jobs-heartbeat")
        return self._collection

    async def _save(self, job: Job) -> None:
        """Write the job's record (a failure to write is logged: the ingestion itself goes on)."""
        try:
            payload = {**job.model_dump(mode="json"), "owner": self._owner, "heartbeat": time.time()}
            await self.store.upsert_points(await self._records(), [Point(id=_job_point(job.id), payload=payload)])
        except InferagError as exc:
            log.warning("job %s: its record was not saved: %s", job.id, exc.message)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for job in list(self._jobs.values()):
                await self._save(job)

    async def submit(
        self, collection: str, items: list[ParsedDocument | Upload], chunking: dict[str, Any] | None
    ) -> Job:
        waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
        if waiting >= self.max_queued:
            raise Overloaded(f"{waiting} ingestion jobs are waiting; retry later.", retry_after=5)
        job = Job(collection=collection, documents_total=len(items))
        self._jobs[job.id] = job
        await self._save(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job, items, chunking), name=job.id)
        await self._forget_old()
        return job

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        try:
            records = await self.store.retrieve_points(await self._records(), [_job_point(job_id)])
        except InvalidRequest:
            records = []
        if not records:
            raise NotFound(f"No job '{job_id}'.", param="job_id", code="job_not_found")
        return await self._read(records[0].payload)

    async def all(self) -> list[Job]:
        """Every kept job, newest first (those of every replica)."""
        records: list[Any] = []
        offset: str | None = None
        name = await self._records()
        while True:
            page, offset = await self.store.scroll_points(name, limit=1024, offset=offset)
            records.extend(page)
            if offset is None:
                break
        jobs = [self._jobs.get(r.payload.get("id", "")) or await self._read(r.payload) for r in records]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    async def _read(self, payload: dict[str, Any]) -> Job:
        """A stored job; one left `queued`/`running` by a process that is gone reads (and is saved) as failed."""
        job = Job.model_validate({k: v for k, v in payload.items() if k in Job.model_fields})
        stale = time.time() - float(payload.get("heartbeat") or 0) > STALE_JOB_S
        if job.status in ("queued", "running") and stale and job.id not in self._jobs:
            _interrupt(job, "its process stopped (crash or restart) before it finished")
            await self._save(job)
        return job

    async def _run(self, job: Job, items: list[ParsedDocument | Upload], chunking: dict[str, Any] | None) -> None:
        interrupted = False
        try:
            async with self._slots:
                job.status = "running"
                await self._save(job)
                self.metrics.jobs_running.inc()
                try:
                    await self.ingestor.ensure_collection(job.collection)
                    for start in range(0, len(items), self.batch):
                        await self._batch(job, items[start:start + self.batch], chunking)
                        await self._save(job)
                finally:
                    self.metrics.jobs_running.dec()
        except asyncio.CancelledError:
            interrupted = True  # shutdown: what was stored stays, the rest is not done
            raise
        except InferagError as exc:  # the collection itself failed: every document fails
            job.errors.append(JobError(document="*", message=exc.message, code=exc.code))
            job.documents_failed = job.documents_total - job.documents_done
        finally:
            if interrupted:
                _interrupt(job, "the service shut down before it finished")
            else:
                job.status = (
                    "succeeded" if job.documents_failed == 0 else "failed" if job.documents_done == 0 else "partial"
                )
            job.finished_at = time.time()
            await asyncio.shield(self._save(job))
            self._jobs.pop(job.id, None)
            self._tasks.pop(job.id, None)

    async def _batch(self, job: Job, items: list[ParsedDocument | Upload], chunking: dict[str, Any] | None) -> None:
        """Parse and chunk each document (a bad one fails alone), then store the good ones in one write."""
        prepared: list[tuple[str, ParsedDocument, list[Chunk]]] = []
        for item in items:
            name = item.name if isinstance(item, Upload) else (item.source or item.resolved_id())
            try:
                docs = await asyncio.to_thread(item.parse) if isinstance(item, Upload) else [item]
                job.documents_total += len(docs) - 1  # attachments and records are documents of their own
                prepared += [(name, doc, await self.ingestor.prepare(doc, chunking)) for doc in docs]
            except Exception as exc:
                self._failed(job, name, exc)
        if not prepared:
            return
        try:
            infos = await self.ingestor.store_documents(job.collection, [(d, c) for _, d, c in prepared])
        except Exception as exc:
            if len(prepared) == 1:
                self._failed(job, prepared[0][0], exc)
                return
            # one at a time, so that each document gets its own error
            infos = []
            for name, doc, chunks in prepared:
                try:
                    infos.append(await self.ingestor.store_document(job.collection, doc, chunks))
                except Exception as one:
                    self._failed(job, name, one)
        job.documents_done += len(infos)
        job.chunks_done += sum(info.chunks for info in infos)

    def _failed(self, job: Job, name: str, exc: Exception) -> None:
        if isinstance(exc, InferagError):
            job.errors.append(JobError(document=name, message=exc.message, code=exc.code))
        else:
            log.error("job %s: %s failed", job.id, name, exc_info=exc)
            job.errors.append(JobError(document=name, message=f"internal error: {exc}", code="internal_error"))
        job.documents_failed += 1
        self.metrics.documents.labels("failed").inc()

    async def _forget_old(self) -> None:
        """Keep the newest KEEP_FINISHED_JOBS finished jobs."""
        name = await self._records()
        if await self.store.count_points(name) <= KEEP_FINISHED_JOBS + FORGET_SLACK:
            return
        finished = [j for j in await self.all() if j.finished_at is not None]
        old = finished[KEEP_FINISHED_JOBS:]
        if old:
            await self.store.delete_points(name, [_job_point(j.id) for j in old])

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)


def _interrupt(job: Job, why: str) -> None:
    job.status = "failed"
    job.finished_at = job.finished_at or time.time()
    job.errors.append(JobError(
        document="*", code="interrupted",
        message=f"The job was interrupted: {why}. {job.documents_done} of {job.documents_total} documents were "
                "stored; submit the documents again to finish (a document stored twice is replaced whole).",
    ))


def _job_point(job_id: str) -> str:
    return str(uuid.uuid5(_JOB_NAMESPACE, job_id))
