"""`VectorStore`: the orchestrator's store (collections, documents, search, recovery, snapshots) on a `Backend`.

Every backend call runs on a thread pool, off the event loop; the engines are thread-safe, so
calls overlap. In the embedded engine one process holds the store, and there a short exclusive
section around commit + publish keeps every reader from seeing a replaced document in between; on
a server (several replicas) readers keep only registry versions and may miss a document for the
moment between another writer's commit and its publish, never see two versions or half of one.

Embedded, the live points of a collection are exactly its committed versions once recovery has run
over it and as long as no exclusive section failed there, so its searches skip the registry lookup;
a collection not known to be settled (a failed write, a restore) is searched with it until recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import models

from inferag_protocol.rag import (
    Chunk,
    CollectionInfo,
    DocumentInfo,
    Fusion,
    Hit,
    MetadataFilter,
    RetrievalMode,
    StoredChunk,
)
from services.common.errors import Conflict, InvalidRequest, NotFound, NotReady

from . import documents, recovery, snapshots
from .backend import Backend, CollectionSpec, Nearest, Point, Record, SparseVector
from .documents import DENSE, SPARSE, Staged, registry_name
from .filters import filter_conditions, live
from .search import search_collection, stored_chunk

log = logging.getLogger(__name__)

T = TypeVar("T")

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
# Hidden companion collections: `_<kind>__<collection>` (`_docs__` is the document registry), and
# collection-less ones `_<kind>__` (e.g. `_jobs__`).
HIDDEN_NAME = re.compile(r"^_([a-z][a-z0-9]{0,15})__([A-Za-z0-9][A-Za-z0-9_-]{0,62})?$")
SERVER_WORKERS = 4
EMBEDDED_WORKERS = 4
# Payload indexes every chunk collection and registry gets (filters of the document protocol).
CHUNK_INDEXES = {"doc_id": "keyword", "version": "keyword", "state": "keyword"}
REGISTRY_INDEXES = {"order": "integer", "published": "bool", "version": "keyword"}


@dataclass(frozen=True)
class _Meta:
    dimension: int
    embed_model: str
    sparse_model: str | None
    # the `metadata` given at creation: the collection's settings (e.g. {"graph": "keyphrase"}); a later
    # create asking for other settings is no conflict here (callers that care compare them)
    settings: dict[str, Any] = dataclass_field(default_factory=dict, compare=False)


@dataclass
class DocumentWrite:
    """One document of a batch write (`VectorStore.write_documents`)."""

    doc_id: str
    source: str | None
    metadata: dict[str, Any] | None
    chunks: Sequence[Chunk]
    dense: Sequence[Sequence[float]]
    sparse: Sequence[SparseVector] | None = None


def validate_collection_name(name: object) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise InvalidRequest(
            f"Invalid collection name {name!r}: use 1-63 letters, digits, '_' or '-', starting with a letter or digit.",
            param="collection",
        )
    return name


def hidden_name(kind: str, collection: str = "") -> str:
    """The hidden companion collection `kind` of `collection` (or collection-less with "")."""
    name = f"_{kind}__{collection}"
    if not HIDDEN_NAME.match(name):
        raise InvalidRequest(f"Invalid hidden collection kind {kind!r}.", param="collection")
    return name


def _meta_of(spec: CollectionSpec | None) -> _Meta | None:
    raw = spec.metadata if spec else None
    if not isinstance(raw, dict) or "dimension" not in raw:
        return None
    return _Meta(dimension=int(raw["dimension"]), embed_model=str(raw["embed_model"]),
                 sparse_model=raw.get("sparse_model"), settings=dict(raw.get("metadata") or {}))


class _ReadWriteLock:
    """Many readers or one writer (writers first, so a stream of searches cannot starve a commit)."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writer and not self._waiting_writers)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting_writers += 1
            try:
                await self._changed.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._changed:
                self._writer = False
                self._changed.notify_all()


class VectorStore:
    """Collections of chunk points with a document registry, on a Qdrant server or embedded.

    `recover_interval_s`: how often recovery runs in the background (0: only at the first operation);
    `optimize_idle_s`, `optimize_min_points`: the embedded engine builds its HNSW index once a
    collection has this many unindexed points and no write for this long.
    """

    def __init__(self, backend: Backend, *, recover_interval_s: float = 60.0, optimize_idle_s: float = 10.0,
                 optimize_min_points: int = 20_000, owns_backend: bool = True):
        self.backend = backend
        self._owns_backend = owns_backend
        self.location = backend.location
        self.recover_interval_s = recover_interval_s
        self.optimize_idle_s, self.optimize_min_points = optimize_idle_s, optimize_min_points
        self._closed = False
        self._recovered = False
        self._ready_lock: asyncio.Lock | None = None
        self._admin_lock: asyncio.Lock | None = None
        self._publish_lock: _ReadWriteLock | None = None
        self._meta_cache: dict[str, _Meta] = {}
        self._indexed: set[tuple[str, str]] = set()
        self._busy: dict[str, int] = {}  # versions being written by this process -> writers
        # collections whose live points are their committed versions (see the module's docstring)
        self._settled: set[str] = set()
        self._last_write: dict[str, float] = {}  # collection -> monotonic time of its last write
        self._maintenance: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=EMBEDDED_WORKERS if self.embedded else SERVER_WORKERS, thread_name_prefix="qdrant-store"
        )

    @property
    def embedded(self) -> bool:
        return self.backend.kind == "embedded"

    @property
    def mode(self) -> str:
        return self.backend.kind

    def _checks_registry(self, collection: str) -> bool:
        """Whether a search must keep only the registry's versions: always on a server, and embedded
        unless the collection is settled and this store is the only one over its engine."""
        return not (self.embedded and self._owns_backend and collection in self._settled)

    # -- plumbing -------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the pool."""
        if self._closed:
            raise NotReady("The vector store is closed.")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except ValueError as exc:
            if str(exc).startswith("Collection ") and str(exc).endswith(" not found"):
                raise NotFound(str(exc)) from exc
            raise

    def _locks(self) -> tuple[asyncio.Lock, asyncio.Lock, _ReadWriteLock]:
        # made on first use: asyncio primitives belong to the loop that runs the store
        if self._ready_lock is None or self._admin_lock is None or self._publish_lock is None:
            self._ready_lock, self._admin_lock, self._publish_lock = asyncio.Lock(), asyncio.Lock(), _ReadWriteLock()
        return self._ready_lock, self._admin_lock, self._publish_lock

    async def _exclusive(self, collection: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the pool, embedded with every reader held off; on a server, as is.

        The section runs to its end even when the caller is cancelled (its thread cannot be stopped,
        and a reader let in meanwhile could see it half done); the cancellation is raised after. If it
        fails, the collection is no longer settled: its searches check the registry until recovery."""
        if not self.embedded:
            return await self._run(fn, *args)
        async with self._locks()[2].write():
            future = asyncio.ensure_future(self._run(fn, *args))
            cancelled = False
            while not future.done():
                try:
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    cancelled = True
            if future.exception() is not None:
                self._settled.discard(collection)
            if cancelled:
                raise asyncio.CancelledError
            return future.result()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Readers of the embedded store never overlap a commit + publish; a server's cannot be held back."""
        if not self.embedded:
            yield
            return
        async with self._locks()[2].read():
            yield

    async def _ready(self) -> None:
        """Recover once, before the first operation; then start the background maintenance."""
        if self._recovered:
            return
        ready_lock = self._locks()[0]
        async with ready_lock:
            if not self._recovered:
                await self._recover()
                self._recovered = True
                if self._maintenance is None and (self.recover_interval_s > 0 or self.embedded):
                    self._maintenance = asyncio.create_task(self._maintain(), name="store-maintenance")

    async def _meta(self, name: str) -> _Meta:
        validate_collection_name(name)
        meta = self._meta_cache.get(name)
        if meta is None:
            meta = _meta_of(await self._run(self.backend.spec, name))
            if meta is None:
                raise NotFound(f"The collection '{name}' does not exist.", param="collection")
            self._meta_cache[name] = meta
        return meta

    def _info(self, name: str, meta: _Meta, counts: tuple[int, int]) -> CollectionInfo:
        return CollectionInfo(name=name, dimension=meta.dimension, embed_model=meta.embed_model,
                              sparse_model=meta.sparse_model or "", points=counts[0], documents=counts[1],
                              settings=meta.settings)

    def _count_sync(self, name: str) -> tuple[int, int]:
        """(live points, documents) of a collection."""
        points = self.backend.count(name, models.Filter(must=[live()]))
        registry = registry_name(name)
        documents_ = self.backend.count(registry) if self.backend.exists(registry) else 0
        return points, documents_

    def _ensure_indexes_sync(self, name: str, indexes: dict[str, Any]) -> None:
        for field, schema in indexes.items():
            if (name, field) not in self._indexed:
                self.backend.index(name, field, schema)
                self._indexed.add((name, field))

    # -- collections ----------------------------------------------------------------------------------------

    async def create_collection(self, name: str, *, dimension: int, embed_model: str,
                                sparse_model: str | None = "bm25",
                                metadata: dict[str, Any] | None = None) -> CollectionInfo:
        """Create a collection; the same call again is a no-op, a different one a `Conflict`.

        `sparse_model="bm25"` makes the sparse vector use Qdrant's IDF modifier (see `bm25.py`);
        another name (e.g. a SPLADE model) stores weights as given; None means no sparse vector.
        """
        validate_collection_name(name)
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
            raise InvalidRequest("The dimension must be a positive integer.", param="dimension")
        if not embed_model:
            raise InvalidRequest("The embedding model must be named.", param="embed_model")
        await self._ready()
        wanted = _Meta(dimension=dimension, embed_model=embed_model, sparse_model=sparse_model or None,
                       settings=dict(metadata or {}))
        async with self._locks()[1]:
            created = await self._run(self._create_collection_sync, name, wanted, metadata or {})
            self._meta_cache[name] = created
        return await self.get_collection(name)

    def _create_collection_sync(self, name: str, wanted: _Meta, metadata: dict[str, Any]) -> _Meta:
        backend = self.backend
        registry = registry_name(name)
        if backend.exists(name):
            existing = _meta_of(backend.spec(name))
            if existing is None:
                raise Conflict(f"A collection '{name}' exists in Qdrant but was not created by inferag.",
                               param="collection")
            if existing != wanted:
                raise Conflict(
                    f"The collection '{name}' exists with dimension {existing.dimension}, embedding model "
                    f"'{existing.embed_model}' and sparse model '{existing.sparse_model}'; asked for "
                    f"{wanted.dimension}, '{wanted.embed_model}' and '{wanted.sparse_model}'.",
                    param="collection",
                )
            if not backend.exists(registry):
                self._create_hidden_sync(registry, {}, REGISTRY_INDEXES)
            return existing
        # the registry first, the collection last: a collection that exists always has its registry.
        # A registry without its collection is a crashed delete's leftover, so it starts afresh.
        for hidden in self._companions_sync(name):
            backend.drop(hidden)
        self._create_hidden_sync(registry, {}, REGISTRY_INDEXES)
        spec = CollectionSpec(
            dense={DENSE: wanted.dimension},
            sparse={SPARSE: wanted.sparse_model == "bm25"} if wanted.sparse_model else {},
            metadata={"dimension": wanted.dimension, "embed_model": wanted.embed_model,
                      "sparse_model": wanted.sparse_model, "metadata": metadata},
        )
        backend.create(name, spec)
        self._ensure_indexes_sync(name, CHUNK_INDEXES)
        self._settled.add(name)  # empty, so nothing to recover
        return wanted

    def _create_hidden_sync(self, name: str, dense: dict[str, int], indexes: dict[str, Any]) -> None:
        self.backend.create(name, CollectionSpec(dense=dense, metadata={"hidden": True}))
        self._indexed = {key for key in self._indexed if key[0] != name}
        self._ensure_indexes_sync(name, indexes)

    def _companions_sync(self, name: str) -> list[str]:
        """The hidden collections of `name` (its registry and any other companions)."""
        return [c for c in self.backend.list_collections()
                if (m := HIDDEN_NAME.match(c)) and m.group(2) == name]

    async def list_collections(self) -> list[CollectionInfo]:
        """inferag's collections (hidden ones and collections of others left out), by name, with counts."""
        await self._ready()
        return await self._run(self._list_collections_sync)

    def _list_collections_sync(self) -> list[CollectionInfo]:
        infos = []
        for name in self.backend.list_collections():
            if not COLLECTION_NAME.match(name):
                continue
            meta = _meta_of(self.backend.spec(name))
            if meta is not None:
                infos.append(self._info(name, meta, self._count_sync(name)))
        return sorted(infos, key=lambda info: info.name)

    async def embedding(self, name: str) -> tuple[int, str]:
        """(dimension, embedding model) of a collection from its cached metadata, without counting its points
        (`NotFound` if absent): the check a read or a write needs on every request."""
        await self._ready()
        meta = await self._meta(name)
        return meta.dimension, meta.embed_model

    async def check_embedding(self, name: str, embed_model: str, dimension: int) -> None:
        """`NotFound` (404) without the collection, `Conflict` (409) when it holds another model's vectors: what
        every read and write checks first."""
        stored_dimension, stored_model = await self.embedding(name)
        if stored_model != embed_model or stored_dimension != dimension:
            raise Conflict(
                f"Collection '{name}' holds vectors of '{stored_model}' ({stored_dimension} dimensions); this "
                f"service embeds with '{embed_model}'. Use another collection or the same model.",
                param="collection",
            )

    async def collection_settings(self, name: str) -> dict[str, Any]:
        """The settings given at creation, from the cached metadata (`NotFound` if absent)."""
        await self._ready()
        return dict((await self._meta(name)).settings)

    async def get_collection(self, name: str) -> CollectionInfo:
        await self._ready()
        meta = await self._meta(name)
        counts = await self._run(self._count_sync, name)
        return self._info(name, meta, counts)

    async def delete_collection(self, name: str) -> None:
        """Delete a collection and its hidden companions, the registry included (`NotFound` if absent)."""
        await self._ready()
        await self._meta(name)
        async with self._locks()[1]:
            await self._run(self._delete_collection_sync, name)
            self._meta_cache.pop(name, None)

    def _delete_collection_sync(self, name: str) -> None:
        # the collection first: companions left alone by a crash are reset by the next create
        self._settled.discard(name)
        self.backend.drop(name)
        for hidden in self._companions_sync(name):
            self.backend.drop(hidden)
        self._indexed = {key for key in self._indexed if key[0] != name and not key[0].endswith(f"__{name}")}

    async def count(self, collection: str) -> int:
        """Live chunk points of a collection."""
        await self._ready()
        await self._meta(collection)
        points, _ = await self._run(self._count_sync, collection)
        return points

    # -- documents ------------------------------------------------------------------------------------------

    async def replace_document(self, collection: str, *, doc_id: str, source: str | None,
                               metadata: dict[str, Any] | None, chunks: Sequence[Chunk],
                               dense: Sequence[Sequence[float]],
                               sparse: Sequence[SparseVector] | None = None) -> DocumentInfo:
        """Store a document's chunks in place of any earlier version, atomically (see `documents.py`)."""
        (info,) = await self.write_documents(collection, [DocumentWrite(doc_id, source, metadata, chunks, dense,
                                                                        sparse)])
        return info

    async def write_documents(self, collection: str, docs: Sequence[DocumentWrite]) -> list[DocumentInfo]:
        """Store several documents in place of their earlier versions: one staged upsert, one commit and one
        publish for all of them (each document is still replaced whole). A doc_id twice: the last one wins."""
        await self._ready()
        meta = await self._meta(collection)
        batch = [documents.build(collection, dimension=meta.dimension, embed_model=meta.embed_model,
                                 sparse_model=meta.sparse_model, doc_id=d.doc_id, source=d.source,
                                 metadata=d.metadata, chunks=d.chunks, dense=d.dense, sparse=d.sparse)
                 for d in docs]
        if not batch:
            return []
        last = {staged.info.doc_id: staged for staged in batch}
        written = list(last.values())
        versions = [staged.info.version for staged in written]
        for version in versions:
            self._busy[version] = self._busy.get(version, 0) + 1
        try:
            await self._run(documents.stage, self.backend, collection, written)
            await self._exclusive(collection, self._commit_and_publish_sync, collection, written)
        finally:
            for version in versions:
                self._busy[version] -= 1
                if not self._busy[version]:
                    del self._busy[version]
            self._last_write[collection] = time.monotonic()
        by_id = {staged.info.doc_id: staged.info for staged in written}
        return [by_id[d.doc_id] for d in docs]

    def _commit_and_publish_sync(self, collection: str, batch: Sequence[Staged]) -> None:
        superseded = documents.commit(self.backend, collection, batch)
        committed = {s.info.doc_id: s.info.version for s in batch if s.info.doc_id in superseded}
        documents.publish(self.backend, collection, committed, superseded)
        documents.discard(self.backend, collection, [s.info.version for s in batch if s.info.doc_id not in superseded])

    async def delete_document(self, collection: str, doc_id: str) -> None:
        """Remove a document: its registry entry and its points (`NotFound` if absent)."""
        await self._ready()
        await self._meta(collection)
        found = await self._exclusive(collection, documents.delete, self.backend, collection, doc_id)
        self._last_write[collection] = time.monotonic()
        if not found:
            raise NotFound(f"The document '{doc_id}' does not exist in '{collection}'.", param="doc_id")

    async def list_documents(self, collection: str, *, limit: int = 100,
                             offset: int = 0) -> tuple[list[DocumentInfo], int]:
        """A page of a collection's documents in the order they were first stored, and how many there are.

        The page is read from Qdrant (ordered by an indexed field, `offset` skipped there), not by
        reading the whole registry."""
        if limit < 0 or offset < 0:
            raise InvalidRequest("limit and offset must not be negative.", param="limit" if limit < 0 else "offset")
        await self._ready()
        await self._meta(collection)
        return await self._run(self._list_documents_sync, collection, limit, offset)

    def _list_documents_sync(self, collection: str, limit: int, offset: int) -> tuple[list[DocumentInfo], int]:
        registry = registry_name(collection)
        total = self.backend.count(registry)
        if limit == 0 or offset >= total:
            return [], total
        records = self.backend.ordered(registry, key="order", limit=limit, offset=offset)
        return [documents.document_info(r) for r in records], total

    async def get_document(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]]:
        """A document's registry entry and its chunks in order (`NotFound` if absent).

        A committed version without live points (a writer died between commit and publish, anywhere) is
        published here and then read: the read repairs what periodic recovery has not reached yet."""
        await self._ready()
        await self._meta(collection)
        async with self._reading():
            found = await self._run(self._get_document_sync, collection, doc_id)
        if found is None:
            raise NotFound(f"The document '{doc_id}' does not exist in '{collection}'.", param="doc_id")
        return found

    def _get_document_sync(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]] | None:
        entry = documents.get_entry(self.backend, collection, doc_id)
        if entry is None:
            return None
        info = documents.document_info(Record(id="", payload=entry))
        records = documents.live_chunks(self.backend, collection, doc_id, info.version)
        if not records and info.chunks and info.version not in self._busy:
            log.warning("document %s/%s: committed version %s had no live points; publishing it",
                        collection, doc_id, info.version)
            documents.publish(self.backend, collection, {doc_id: info.version},
                              {doc_id: list(entry.get("previous") or [])})
            records = documents.live_chunks(self.backend, collection, doc_id, info.version)
        chunks = [StoredChunk(**stored_chunk(record)) for record in records]
        return info, sorted(chunks, key=lambda chunk: chunk.chunk_index)

    # -- search ---------------------------------------------------------------------------------------------

    async def search(
        self,
        collections: Sequence[str],
        *,
        dense: Sequence[float] | None,
        sparse: SparseVector | None,
        mode: RetrievalMode,
        fusion: Fusion = "rrf",
        top_k: int = 10,
        filter: MetadataFilter | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The `top_k` best live chunks over `collections`, best first.

        `dense` queries the "dense" vector, `sparse` the "sparse" one, and `hybrid` fuses both inside
        Qdrant (two prefetches of `4 * top_k` and RRF or DBSF). Each collection is queried on its own
        and the hits are merged by score, which is sound because the scores are comparable across
        collections: cosine similarity of one embedding model (collections must share it), BM25 with
        each collection's own IDF (close for collections of similar text), and RRF, which only depends
        on ranks (DBSF normalizes per collection, so its merge is approximate).
        """
        if isinstance(collections, str) or not collections:
            raise InvalidRequest("Name at least one collection.", param="collections")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise InvalidRequest("top_k must be between 1 and 1000.", param="top_k")
        if mode not in ("dense", "sparse", "hybrid"):
            raise InvalidRequest(f"Unknown retrieval mode {mode!r}.", param="mode")
        if fusion not in ("rrf", "dbsf"):
            raise InvalidRequest(f"Unknown fusion {fusion!r}.", param="fusion")
        if mode in ("dense", "hybrid") and dense is None:
            raise InvalidRequest(f"{mode} retrieval needs a dense query vector.", param="dense")
        if mode in ("sparse", "hybrid") and sparse is None:
            raise InvalidRequest(f"{mode} retrieval needs a sparse query vector.", param="sparse")
        conditions, indexes = filter_conditions(filter)
        await self._ready()
        names = list(dict.fromkeys(collections))
        metas = [await self._meta(name) for name in names]
        if mode != "sparse":
            assert dense is not None
            for name, meta in zip(names, metas, strict=True):
                if len(dense) != meta.dimension:
                    raise InvalidRequest(f"The collection '{name}' holds {meta.dimension}-dimensional vectors "
                                         f"({meta.embed_model}); the query has {len(dense)}.", param="dense")
            if len({meta.embed_model for meta in metas}) > 1:
                raise InvalidRequest("These collections use different embedding models; search them separately.",
                                     param="collections")
        if mode != "dense":
            for name, meta in zip(names, metas, strict=True):
                if not meta.sparse_model:
                    raise InvalidRequest(f"The collection '{name}' has no sparse vectors.", param="mode")
            if len({meta.sparse_model for meta in metas}) > 1:
                raise InvalidRequest("These collections use different sparse models; search them separately.",
                                     param="collections")
        if indexes:
            missing = [(n, f, s) for n in names for f, s in indexes.items() if (n, f) not in self._indexed]
            for name, field, schema in missing:
                await self._run(self._ensure_indexes_sync, name, {field: schema})
        flt = models.Filter(must=[live(), *conditions])
        dense_query = [float(x) for x in dense] if dense is not None and mode != "sparse" else None
        sparse_query = None
        if sparse is not None and mode != "dense" and sparse.indices:
            sparse_query = SparseVector(list(sparse.indices), [float(v) for v in sparse.values])
        if mode == "sparse" and sparse_query is None:
            return []  # nothing but stopwords: no term to match
        async with self._reading():
            results = await asyncio.gather(*(
                self._run(search_collection, self.backend, name, mode, dense_query, sparse_query, fusion, top_k, flt,
                          score_threshold, check_registry=self._checks_registry(name))
                for name in names
            ))
        hits = [hit for result in results for hit in result]
        hits.sort(key=lambda hit: (-hit.score, hit.collection, hit.doc_id, hit.chunk_index))
        return hits[:top_k]

    async def chunks_by_ids(self, collection: str, ids: Sequence[str],
                            filter: MetadataFilter | None = None) -> list[StoredChunk]:
        """The live chunks of committed versions among `ids` that pass the metadata filter, in the order of `ids`
        (what a graph walk reached, read back)."""
        conditions, _ = filter_conditions(filter)
        await self._ready()
        await self._meta(collection)
        if not ids:
            return []
        flt = models.Filter(must=[models.HasIdCondition(has_id=list(ids)), live(), *conditions])
        async with self._reading():
            found = await self._run(self._chunks_by_ids_sync, collection, list(ids), flt)
        return [found[i] for i in ids if i in found]

    def _chunks_by_ids_sync(self, collection: str, ids: list[str], flt: models.Filter) -> dict[str, StoredChunk]:
        records, _ = self.backend.scroll(collection, filter=flt, limit=len(ids))
        if records and self._checks_registry(collection):
            records = documents.committed_only(self.backend, collection, records)
        return {r.id: StoredChunk(**stored_chunk(r)) for r in records}

    # -- hidden companion collections (for other parts: the graph, jobs) -------------------------------------

    async def create_hidden(self, kind: str, collection: str = "", *, dense: dict[str, int] | None = None,
                            indexes: dict[str, str] | None = None) -> str:
        """Create (if absent) the hidden collection `_<kind>__<collection>` and return its name.

        `dense`: named dense vectors (name -> dimension, cosine); `indexes`: payload field -> "keyword",
        "integer", "float" or "bool". A companion of a collection is deleted with it (and snapshotted with
        it); `collection=""` makes a store-wide one. Points are written and read with the methods below.
        """
        name = hidden_name(kind, collection)
        await self._ready()
        async with self._locks()[1]:
            if not await self._run(self.backend.exists, name):
                await self._run(self._create_hidden_sync, name, dict(dense or {}), dict(indexes or {}))
            elif indexes:
                await self._run(self._ensure_indexes_sync, name, dict(indexes))
        return name

    def _hidden(self, name: str) -> str:
        if not HIDDEN_NAME.match(name):
            raise InvalidRequest(f"{name!r} is not a hidden collection name.", param="collection")
        return name

    async def upsert_points(self, name: str, points: Sequence[Point]) -> None:
        """Write points (`Point(id, payload, dense={...})`, ids UUID strings) to a hidden collection."""
        for start in range(0, len(points), documents.UPSERT_BATCH):
            await self._run(self.backend.upsert, self._hidden(name), points[start:start + documents.UPSERT_BATCH])

    async def delete_points(self, name: str, selector: models.Filter | Sequence[str]) -> None:
        """Delete a hidden collection's points matching a qdrant-client `models.Filter`, or by ids."""
        await self._run(self.backend.delete, self._hidden(name), selector)

    async def retrieve_points(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Record]:
        """A hidden collection's points by id (absent ids left out)."""
        return await self._run(self.backend.retrieve, self._hidden(name), list(ids), with_vectors=with_vectors)

    async def scroll_points(self, name: str, *, filter: models.Filter | None = None, limit: int = 256,
                            offset: str | None = None) -> tuple[list[Record], str | None]:
        """A page of a hidden collection's points matching `filter`, and the offset of the next (None: done)."""
        return await self._run(self.backend.scroll, self._hidden(name), filter=filter, limit=limit, offset=offset)

    async def search_points(self, name: str, vector: Sequence[float], *, using: str, limit: int = 10,
                            filter: models.Filter | None = None) -> list[Record]:
        """Nearest points of a hidden collection to a dense `vector` of its named vector `using`, best first."""
        return await self._run(self.backend.query, self._hidden(name), [Nearest(using, [float(x) for x in vector])],
                               limit=limit, filter=filter)

    async def count_points(self, name: str, filter: models.Filter | None = None) -> int:
        return await self._run(self.backend.count, self._hidden(name), filter)

    async def drop_hidden(self, name: str) -> None:
        await self._run(self.backend.drop, self._hidden(name))

    # -- snapshots ------------------------------------------------------------------------------------------

    async def snapshot(self, collection: str, target: Path) -> Path:
        """Write a snapshot file of `collection` (with its registry and companions) to `target`."""
        await self._ready()
        await self._meta(collection)
        # no write lands half-way through the parts
        await self._exclusive(collection, self._snapshot_sync, collection, target)
        return target

    def _snapshot_sync(self, collection: str, target: Path) -> None:
        parts: dict[str, tuple[CollectionSpec, Path]] = {}
        with tempfile.TemporaryDirectory(prefix="inferag-snapshot-", dir=target.parent) as folder:
            for name in [collection, *self._companions_sync(collection)]:
                spec = self.backend.spec(name) or CollectionSpec(dense={}, metadata={"hidden": True})
                kind = "" if name == collection else f"_{HIDDEN_NAME.match(name).group(1)}__"  # type: ignore[union-attr]
                shard = Path(folder) / f"part-{len(parts)}.snapshot"
                self.backend.snapshot(name, shard)
                parts[kind] = (spec, shard)
            snapshots.write_snapshot(target, collection, parts)

    async def restore(self, source: Path, name: str | None = None) -> CollectionInfo:
        """A new collection (`name`, default the snapshot's) from a snapshot file (`Conflict` if it exists)."""
        await self._ready()
        async with self._locks()[1]:
            restored = await self._run(self._restore_sync, source, name)
            self._meta_cache.pop(restored, None)
            await self._recover_collection(restored)  # a server's snapshot may hold a write under way
        return await self.get_collection(restored)

    def _restore_sync(self, source: Path, name: str | None) -> str:
        with snapshots.opened_snapshot(source) as (manifest, folder):
            name = validate_collection_name(name or manifest.get("collection"))
            specs = {kind: snapshots.spec_from_json(raw) for kind, raw in manifest["parts"].items()}
            if "" not in specs or _meta_of(specs[""]) is None or "_docs__" not in specs:
                raise InvalidRequest("The snapshot holds no inferag collection.", param="file")
            if self.backend.exists(name):
                raise Conflict(f"The collection '{name}' exists; delete it first or restore under another name.",
                               param="name")
            for hidden in self._companions_sync(name):  # a crashed delete's leftovers
                self.backend.drop(hidden)
            # companions first, the collection last: it appears whole or not at all
            for kind in sorted(specs, key=lambda k: k == ""):
                target = name if kind == "" else f"{kind}{name}"
                self._restore_part_sync(target, specs[kind], folder / snapshots.part_file(kind))
            return name

    def _restore_part_sync(self, target: str, spec: CollectionSpec, shard_snapshot: Path) -> None:
        from .embedded import EmbeddedBackend

        if isinstance(self.backend, EmbeddedBackend):
            self.backend.restore(target, spec, shard_snapshot)
        else:  # a server: the points are copied from the unpacked shard
            with tempfile.TemporaryDirectory(prefix="inferag-unpack-", dir=shard_snapshot.parent) as unpacked:
                reader = EmbeddedBackend(unpacked)
                try:
                    reader.restore("part", spec, shard_snapshot)
                    self.backend.create(target, spec)

                    def read_page(offset: str | None) -> tuple[list[Record], str | None]:
                        return reader.scroll("part", limit=snapshots.COPY_BATCH, offset=offset, with_vectors=True)

                    snapshots.copy_points(read_page, lambda points: self.backend.upsert(target, points))
                finally:
                    reader.close()
        indexes = REGISTRY_INDEXES if target.startswith(documents.REGISTRY_PREFIX) else \
            CHUNK_INDEXES if COLLECTION_NAME.match(target) else {}
        self._indexed = {key for key in self._indexed if key[0] != target}
        self._ensure_indexes_sync(target, indexes)

    # -- recovery, maintenance and lifecycle -----------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Finish or roll back what a crash left (see `recovery.py`); runs by itself before the store's first
        operation and every `recover_interval_s`. Returns {"published": points set live, "deleted": points removed}.
        """
        async with self._locks()[0]:
            totals = await self._recover()
            self._recovered = True
        return totals

    async def _recover(self) -> dict[str, int]:
        # under the admin lock: a collection being created has its registry before itself, which must not
        # look like a crashed delete's leftover
        async with self._locks()[1]:
            return await self._recover_all()

    async def _recover_all(self) -> dict[str, int]:
        names = await self._run(self.backend.list_collections)
        totals = {"published": 0, "deleted": 0}
        for name in names:
            hidden = HIDDEN_NAME.match(name)
            if hidden:
                main = hidden.group(2)
                if self.embedded and main and main not in names:
                    # a crashed delete_collection's leftover (on a server it may be a create under way)
                    await self._run(self.backend.drop, name)
                continue
            if not COLLECTION_NAME.match(name) or _meta_of(await self._run(self.backend.spec, name)) is None:
                continue
            published, deleted = await self._recover_collection(name)
            totals["published"] += published
            totals["deleted"] += deleted
            if published or deleted:
                log.warning("recovered collection %s: %d points published, %d deleted", name, published, deleted)
        return totals

    async def _recover_collection(self, name: str) -> tuple[int, int]:
        """Recover one collection (under the admin lock), embedded with readers held off: it publishes, and
        afterwards the collection is settled. The versions being written are read here, on the event loop
        (a writer makes its version and announces it in one step), with the time: a version made later is a
        writer's that started meanwhile, whose staged points recovery must leave alone."""
        busy, busy_at_ms = set(self._busy), time.time_ns() // 1_000_000
        return await self._exclusive(name, self._recover_collection_sync, name, busy, busy_at_ms)

    def _recover_collection_sync(self, name: str, busy: Set[str], busy_at_ms: int) -> tuple[int, int]:
        registry = registry_name(name)
        if not self.backend.exists(registry):
            self._create_hidden_sync(registry, {}, REGISTRY_INDEXES)
        self._ensure_indexes_sync(name, CHUNK_INDEXES)
        self._ensure_indexes_sync(registry, REGISTRY_INDEXES)
        self._backfill_order_sync(registry)
        counts = recovery.recover_collection(self.backend, name, busy, busy_at_ms=busy_at_ms)
        self._settled.add(name)  # still under the exclusive section
        return counts

    def _backfill_order_sync(self, registry: str) -> None:
        """Entries written before documents were listed in order (an earlier version) get their `order`."""
        missing = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="order"))])
        for record in documents.scroll_all(self.backend, registry, missing, ["ingested_at"]):
            order = int(float(record.payload.get("ingested_at") or 0) * 1e9)
            self.backend.set_payload(registry, {"order": order}, [record.id])

    async def _maintain(self) -> None:
        """Periodic recovery, and (embedded) the HNSW build of collections that have gone quiet."""
        last_recovery = time.monotonic()
        tick = min(self.recover_interval_s or 5.0, 5.0, max(self.optimize_idle_s, 0.5))
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                if self.recover_interval_s and time.monotonic() - last_recovery >= self.recover_interval_s:
                    await self.recover()
                    last_recovery = time.monotonic()
                if self.embedded:
                    await self._optimize_quiet()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed round is logged and tried again next time
                log.exception("vector store maintenance failed")

    async def _optimize_quiet(self) -> None:
        now = time.monotonic()
        for name, at in list(self._last_write.items()):
            if now - at < self.optimize_idle_s:
                continue
            del self._last_write[name]
            unindexed = getattr(self.backend, "unindexed", None)
            if unindexed is None or await self._run(unindexed, name) < self.optimize_min_points:
                continue
            started = time.monotonic()
            await self._run(self.backend.optimize, name)
            log.info("collection %s: index built in %.1f s", name, time.monotonic() - started)

    async def optimize(self, collection: str) -> bool:
        """Build the collection's HNSW index now (embedded; a server builds its own). True if there was work."""
        await self._ready()
        await self._meta(collection)
        return await self._run(self.backend.optimize, collection)

    async def ping(self) -> None:
        """Readiness: raises `UpstreamUnavailable` when the server cannot be reached, `NotReady` once closed."""
        if self._closed:
            raise NotReady("The vector store is closed.")
        await self._run(self.backend.list_collections)
        await self._ready()

    async def close(self) -> None:
        """Close the store (releasing the folder lock when embedded); idempotent."""
        if self._closed:
            return
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(BaseException):
                await self._maintenance
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            if self._owns_backend:
                await loop.run_in_executor(self._executor, self.backend.close)
        finally:
            self._executor.shutdown(wait=True)

    def close_sync(self) -> None:
        """`close` for code without an event loop (e.g. a CLI); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_backend:
                self._executor.submit(self.backend.close).result()
        finally:
            self._executor.shutdown(wait=True)


def open_store(*, url: str | None, api_key: str | None = None, path: str | Path | None = None,
               shard_number: int | None = None, replication_factor: int | None = None,
               recover_interval_s: float = 60.0, optimize_idle_s: float = 10.0,
               optimize_min_points: int = 20_000) -> VectorStore:
    """A store on the Qdrant server at `url` if given, else embedded in the folder `path` (`":memory:"`: a
    temporary folder). Raises `StoreLocked` when the folder is open in another process, and
    `StoreNeedsMigration` for a folder of the previous version (`inferag collections migrate`)."""
    backend: Backend
    if url:
        from .server import ServerBackend

        backend = ServerBackend(url, api_key=api_key, shard_number=shard_number,
                                replication_factor=replication_factor)
    elif path is None:
        raise ValueError("open_store needs a Qdrant url or a local path (':memory:' for a temporary one)")
    else:
        from .embedded import EmbeddedBackend

        backend = EmbeddedBackend(path)
    return VectorStore(backend, recover_interval_s=recover_interval_s, optimize_idle_s=optimize_idle_s,
                       optimize_min_points=optimize_min_points)
