"""Ingestion: parsed documents → chunks → dense and sparse vectors → the store, and background jobs.

A document is stored whole or not at all (the store's replace is atomic per document).
A request is checked before anything is written: every document is chunked first, so a
bad parameter or an empty document fails the request with nothing stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from services.common.errors import Conflict, InferagError, InvalidRequest, NotFound, Overloaded
from services.embeddings.client import Embedder

from .bm25 import BM25Encoder
from .chunking import Chunker, ChunkingParams, parse_chunking
from .graph.service import GraphService
from .graph.types import SETTING, GraphMode
from .metrics import RagMetrics
from .parsing import ParsedDocument, parse_upload
from .protocol import IngestResult, Job, JobError
from .settings import RagSettings
from .store import VectorStore
from .types import Chunk, DocumentInfo

log = logging.getLogger(__name__)

KEEP_FINISHED_JOBS = 1000


@dataclass
class Upload:
    """A file as received, parsed when its turn comes (in a job, a bad file fails alone)."""

    filename: str
    data: bytes
    doc_id: str | None = None
    metadata: dict[str, Any] | None = None

    def parse(self) -> ParsedDocument:
        doc = parse_upload(self.filename, self.data)
        doc.doc_id = self.doc_id
        doc.metadata = {**doc.metadata, **(self.metadata or {})}
        return doc

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
            await self.check_collection(name)
        except NotFound:  # create_collection is idempotent, and a Conflict if another model won a race
            await self.store.create_collection(
                name, dimension=self.embedder.dimension, embed_model=self.embedder.embed_model, sparse_model="bm25",
                metadata={SETTING: graph or self.settings.graph_default},
            )

    async def check_collection(self, name: str) -> None:
        """NotFound (404) without the collection, Conflict (409) when it holds another model's vectors."""
        dimension, model = await self.store.embedding(name)
        if model != self.embedder.embed_model or dimension != self.embedder.dimension:
            raise Conflict(
                f"Collection '{name}' holds vectors of '{model}' ({dimension} dimensions); this "
                f"service embeds with '{self.embedder.embed_model}'. Use another collection or the same model.",
                param="collection",
            )

    async def prepare(self, doc: ParsedDocument, chunking: dict[str, Any] | None) -> list[Chunk]:
        chunks = await self.chunker.chunk(doc.text, self.chunking(chunking, doc.format))
        if not chunks:
            raise InvalidRequest(f"Document '{doc.source or doc.resolved_id()}' has no text.", param="documents")
        return chunks

    async def store_document(self, collection: str, doc: ParsedDocument, chunks: list[Chunk]) -> DocumentInfo:
        texts = [c.text for c in chunks]
        # the knowledge graph's extraction runs beside the embedding (in a thread, or on the generation service)
        extraction = asyncio.ensure_future(self.graph.extract(collection, texts)) if self.graph else None
        try:
            dense = await self.embedder.embed(texts)
            sparse = await asyncio.to_thread(self.sparse.encode_documents, texts)
            extracted = await extraction if extraction else None
        except BaseException:
            if extraction:
                extraction.cancel()
            raise
        info = await self.store.replace_document(
            collection,
            doc_id=doc.resolved_id(),
            source=doc.source,
            metadata=doc.metadata,
            chunks=chunks,
            dense=dense,
            sparse=sparse,
        )
        if self.graph:
            await self.graph.document_stored(collection, info, extracted)
        self.metrics.documents.labels("ok").inc()
        self.metrics.chunks.inc(len(chunks))
        return info

    async def ingest(
        self, collection: str, docs: list[ParsedDocument], chunking: dict[str, Any] | None
    ) -> IngestResult:
        """Store every document (chunked first, so a bad one fails the request before any write)."""
        await self.ensure_collection(collection)
        prepared = [(doc, await self.prepare(doc, chunking)) for doc in docs]
        try:
            stored = [await self.store_document(collection, doc, chunks) for doc, chunks in prepared]
        finally:
            if self.graph:  # the documents' graph writes, together
                await self.graph.flush(collection)
        return IngestResult(collection=collection, documents=stored, chunks=sum(d.chunks for d in stored))


class JobManager:
    """Background ingestion: bounded (429 over `max_queued_jobs`), progress per document, errors per file."""

    def __init__(self, ingestor: Ingestor, settings: RagSettings, metrics: RagMetrics):
        self.ingestor, self.metrics = ingestor, metrics
        self.max_queued = settings.max_queued_jobs
        self._slots = asyncio.Semaphore(settings.max_jobs)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def submit(
        self, collection: str, items: list[ParsedDocument | Upload], chunking: dict[str, Any] | None
    ) -> Job:
        waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
        if waiting >= self.max_queued:
            raise Overloaded(f"{waiting} ingestion jobs are waiting; retry later.", retry_after=5)
        job = Job(collection=collection, documents_total=len(items))
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._run(job, items, chunking), name=job.id)
        self._forget_old()
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"No job '{job_id}'.", param="job_id", code="job_not_found") from None

    def all(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    async def _run(self, job: Job, items: list[ParsedDocument | Upload], chunking: dict[str, Any] | None) -> None:
        try:
            async with self._slots:
                job.status = "running"
                self.metrics.jobs_running.inc()
                try:
                    await self.ingestor.ensure_collection(job.collection)
                    for item in items:
                        await self._one(job, item, chunking)
                finally:
                    self.metrics.jobs_running.dec()
        except InferagError as exc:  # the collection itself failed: every document fails
            job.errors.append(JobError(document="*", message=exc.message, code=exc.code))
            job.documents_failed = job.documents_total - job.documents_done
        finally:
            job.status = (
                "succeeded" if job.documents_failed == 0 else "failed" if job.documents_done == 0 else "partial"
            )
            job.finished_at = time.time()
            self._tasks.pop(job.id, None)

    async def _one(self, job: Job, item: ParsedDocument | Upload, chunking: dict[str, Any] | None) -> None:
        name = item.name if isinstance(item, Upload) else (item.source or item.resolved_id())
        try:
            doc = await asyncio.to_thread(item.parse) if isinstance(item, Upload) else item
            info = await self.ingestor.store_document(
                job.collection, doc, await self.ingestor.prepare(doc, chunking)
            )
        except InferagError as exc:
            job.errors.append(JobError(document=name, message=exc.message, code=exc.code))
            job.documents_failed += 1
            self.metrics.documents.labels("failed").inc()
        except Exception as exc:
            log.exception("job %s: %s failed", job.id, name)
            job.errors.append(JobError(document=name, message=f"internal error: {exc}", code="internal_error"))
            job.documents_failed += 1
            self.metrics.documents.labels("failed").inc()
        else:
            job.documents_done += 1
            job.chunks_done += info.chunks

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.finished_at is not None]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[key]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
