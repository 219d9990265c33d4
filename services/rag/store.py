"""The orchestrator's vector store: Qdrant through qdrant-client, on a server or embedded.

One class for the three modes configuration can pick (`open_store`): a Qdrant server (`url`,
the compose/Kubernetes path), qdrant-client's local mode in a folder (`path`, the laptop
default) and in memory (`":memory:"`, tests). The code path is the same; only the thread pool
differs. Every qdrant-client call runs in a `ThreadPoolExecutor`, off the event loop: one
worker in embedded modes, where local mode is not thread-safe and one worker serializes every
call, and a few against a server.

Each public operation is one job on that pool, so in embedded modes it is atomic with respect
to every other operation: a search never sees a document half replaced.

Documents are replaced with a write-ahead protocol (see `replace_document`): chunk points of
a new version are written `staged`, the document registry (a hidden collection per collection)
then points at the new version, the commit point, and only then are the new points set `live`
and the old ones deleted. Readers see `live` points whose version is the registry's, so a crash
at any step leaves each document whole, old or new; `recover()` (run before the first operation)
finishes or rolls back what a crash left.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import (
    Conflict,
    InferagError,
    InvalidRequest,
    NotFound,
    NotReady,
    UpstreamUnavailable,
)

from .types import Chunk, CollectionInfo, DocumentInfo, Fusion, Hit, MetadataFilter, RetrievalMode, StoredChunk

if TYPE_CHECKING:
    # only the shape (indices, values) is read here; importing it eagerly would load the embeddings stack
    from services.embeddings.client import SparseVector

log = logging.getLogger(__name__)

T = TypeVar("T")

DENSE = "dense"
SPARSE = "sparse"
STAGED = "staged"
LIVE = "live"
REGISTRY_PREFIX = "_docs__"
UPSERT_BATCH = 256
SERVER_WORKERS = 4
# A server's staged points that no registry entry points to may belong to an ingestion still under
# way in another replica; only this old are they a crash's leftovers.
STALE_STAGED_S = 3600.0
# Collection metadata key holding what `create_collection` was given.
_META_KEY = "inferag"
_NAMESPACE = uuid.UUID("5b7c1f0e-8d6a-4c1e-9a51-3f2f6f1e4a20")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_RANGE_OPS = ("gt", "gte", "lt", "lte")
_RESERVED_KEYS = ("doc_id", "source")
_SCROLL_PAGE = 1024

Mode = Literal["server", "local", "memory"]


class StoreLocked(InferagError):
    """The store's folder is open in another process (qdrant local mode allows one)."""

    status_code = 503
    type = "service_unavailable"
    code = "store_locked"

    def __init__(self, folder: str | Path):
        super().__init__(
            f"The vector store folder {folder} is in use by another process (embedded Qdrant allows one). "
            "Stop the other process, or run a Qdrant server and set QDRANT_URL."
        )


@dataclass(frozen=True)
class _Meta:
    dimension: int
    embed_model: str
    sparse_model: str | None
    # the `metadata` given at creation: the collection's settings (e.g. {"graph": "keyphrase"}); a later
    # create that asks for other settings is not a conflict here (callers that care compare them)
    settings: dict[str, Any] = field(default_factory=dict, compare=False)


def registry_name(collection: str) -> str:
    """The hidden collection holding `collection`'s document registry."""
    return f"{REGISTRY_PREFIX}{collection}"


def chunk_point_id(doc_id: str, version: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"chunk\x00{doc_id}\x00{version}\x00{chunk_index}"))


def document_point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"doc\x00{doc_id}"))


def new_version() -> str:
    """A fresh, unique version: creation time (ms, hex) first, so `recover()` can tell its age."""
    return f"{time.time_ns() // 1_000_000:x}-{uuid.uuid4().hex[:12]}"


def _version_age_s(version: str) -> float:
    try:
        created_ms = int(version.split("-", 1)[0], 16)
    except ValueError:
        return math.inf
    return time.time() - created_ms / 1000


def validate_collection_name(name: object) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name):
        raise InvalidRequest(
            f"Invalid collection name {name!r}: use 1-63 letters, digits, '_' or '-', starting with a letter or digit.",
            param="collection",
        )
    return name


def _match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _live_condition() -> models.FieldCondition:
    return _match("state", LIVE)


def _doc_filter(doc_id: str, version: str | None = None, *, other_versions: bool = False) -> models.Filter:
    must: list[models.Condition] = [_match("doc_id", doc_id)]
    if version is None:
        return models.Filter(must=must)
    if other_versions:
        return models.Filter(must=must, must_not=[_match("version", version)])
    return models.Filter(must=[*must, _match("version", version)])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bad_filter(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid filter: {message}", param="filter")


def _plain_key(key: object) -> bool:
    """A metadata key usable as `metadata.<key>`: Qdrant parses unquoted path keys as letters, digits, '_', '-'
    (anything else, like '=' or a control character, made its local mode raise: a 500)."""
    return isinstance(key, str) and 0 < len(key) <= 128 and all(c.isalnum() or c in "_-" for c in key)


def filter_conditions(
    spec: MetadataFilter | None,
) -> tuple[list[models.Condition], dict[str, models.PayloadSchemaType]]:
    """A metadata filter as Qdrant conditions (all must hold), and the payload index each field wants.

    `{"k": v}` is equality on `metadata.k`, `{"k": {"any": [...]}}` any-of, `{"k": {"gte": 1, "lt": 5}}`
    a range; `doc_id` and `source` are the document's own fields (equality or any-of).
    """
    if spec is None:
        return [], {}
    if not isinstance(spec, dict):
        raise _bad_filter("expected an object of conditions.")
    conditions: list[models.Condition] = []
    indexes: dict[str, models.PayloadSchemaType] = {}
    for key, value in spec.items():
        if not _plain_key(key):
            raise _bad_filter(f"invalid key {key!r}.")
        reserved = key in _RESERVED_KEYS
        path = key if reserved else f"metadata.{key}"
        if isinstance(value, dict):
            ops = set(value)
            if ops == {"any"}:
                options = value["any"]
                if not isinstance(options, list) or not options:
                    raise _bad_filter(f"'{key}.any' must be a non-empty list.")
                if all(isinstance(o, str) for o in options):
                    schema = models.PayloadSchemaType.KEYWORD
                elif all(isinstance(o, int) and not isinstance(o, bool) for o in options) and not reserved:
                    schema = models.PayloadSchemaType.INTEGER
                else:
                    raise _bad_filter(f"'{key}.any' must list strings only or integers only.")
                conditions.append(models.FieldCondition(key=path, match=models.MatchAny(any=options)))
                indexes[path] = schema
            elif ops and ops <= set(_RANGE_OPS) and not reserved:
                bounds = {op: value[op] for op in _RANGE_OPS if op in value}
                if not all(_is_number(b) for b in bounds.values()):
                    raise _bad_filter(f"the bounds of '{key}' must be numbers.")
                conditions.append(models.FieldCondition(key=path, range=models.Range(**bounds)))
                integral = all(isinstance(b, int) for b in bounds.values())
                indexes[path] = models.PayloadSchemaType.INTEGER if integral else models.PayloadSchemaType.FLOAT
            else:
                allowed = "'any'" if reserved else "'any', or range operators gt, gte, lt, lte"
                raise _bad_filter(f"'{key}' takes a value, or an object with {allowed}; got keys {sorted(ops)}.")
        elif isinstance(value, str):
            conditions.append(_match(path, value))
            indexes[path] = models.PayloadSchemaType.KEYWORD
        elif isinstance(value, bool | int) and not reserved:
            conditions.append(_match(path, value))
            is_bool = isinstance(value, bool)
            indexes[path] = models.PayloadSchemaType.BOOL if is_bool else models.PayloadSchemaType.INTEGER
        elif _is_number(value) and not reserved:
            # MatchValue has no floats: an exact float is the range [v, v]
            conditions.append(models.FieldCondition(key=path, range=models.Range(gte=value, lte=value)))
            indexes[path] = models.PayloadSchemaType.FLOAT
        else:
            raise _bad_filter(f"unsupported value for '{key}': {value!r}.")
    return conditions, indexes


def _payload(record: models.Record | models.ScoredPoint) -> dict[str, Any]:
    return record.payload or {}


def _stored_chunk(record: models.Record | models.ScoredPoint) -> dict[str, Any]:
    p = _payload(record)
    return {
        "id": str(record.id),
        "doc_id": p.get("doc_id", ""),
        "chunk_index": p.get("chunk_index", 0),
        "text": p.get("text", ""),
        "start": p.get("start", 0),
        "end": p.get("end", 0),
        "tokens": p.get("tokens", 0),
        "source": p.get("source"),
        "metadata": p.get("metadata") or {},
    }


def _document_info(record: models.Record) -> DocumentInfo:
    p = _payload(record)
    return DocumentInfo(
        doc_id=p["doc_id"],
        source=p.get("source"),
        chunks=p.get("chunks", 0),
        characters=p.get("characters", 0),
        metadata=p.get("metadata") or {},
        version=p["version"],
        ingested_at=p.get("ingested_at", 0.0),
    )


class VectorStore:
    """Collections of chunk points with a document registry, over qdrant-client. See the module docstring."""

    def __init__(self, *, url: str | None = None, api_key: str | None = None, path: str | Path | None = None,
                 timeout_s: int = 10, shard_number: int | None = None, replication_factor: int | None = None):
        if url:
            self.mode: Mode = "server"
            self.location = url
        elif path is None:
            raise ValueError("open_store needs a Qdrant url or a local path (':memory:' for memory)")
        elif str(path) == ":memory:":
            self.mode = "memory"
            self.location = ":memory:"
        else:
            self.mode = "local"
            self.location = str(Path(path).expanduser().resolve())
        self._url = url
        self._api_key = api_key
        self._timeout_s = timeout_s
        # Cluster layout of new collections (server only; embedded Qdrant has one shard).
        self._layout: dict[str, Any] = {}
        if url:
            self._layout = {k: v for k, v in (("shard_number", shard_number),
                                              ("replication_factor", replication_factor)) if v is not None}
        self._closed = False
        self._recovered = False
        self._ready_lock = asyncio.Lock()
        self._admin_lock = asyncio.Lock()
        self._doc_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._meta_cache: dict[str, _Meta] = {}
        self._indexed: set[tuple[str, str]] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.embedded else SERVER_WORKERS, thread_name_prefix="qdrant-store"
        )
        try:
            # built on the pool's thread: local mode's SQLite connections are made there and used there
            self._client: QdrantClient = self._executor.submit(self._connect).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @property
    def embedded(self) -> bool:
        return self.mode != "server"

    def _connect(self) -> QdrantClient:
        if self.mode == "server":
            # no version check: opening must not need the server; `ping()` does
            return QdrantClient(url=self._url, api_key=self._api_key, timeout=self._timeout_s,
                                check_compatibility=False)
        if self.mode == "memory":
            return QdrantClient(location=":memory:")
        try:
            return QdrantClient(path=self.location)
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise StoreLocked(self.location) from exc

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the pool, with qdrant-client's errors as domain errors."""
        if self._closed:
            raise NotReady("The vector store is closed.")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except (ResponseHandlingException, httpx.TransportError, ConnectionError) as exc:
            raise UpstreamUnavailable(f"The Qdrant server at {self.location} is unreachable: {exc}") from exc
        except UnexpectedResponse as exc:
            detail = exc.content.decode("utf-8", "replace")[:500] if exc.content else exc.reason_phrase
            if exc.status_code == 404:
                raise NotFound(f"Qdrant: {detail}") from exc
            if exc.status_code == 409:
                raise Conflict(f"Qdrant: {detail}") from exc
            if exc.status_code in (400, 422):
                raise InvalidRequest(f"Qdrant rejected the request: {detail}") from exc
            if exc.status_code in (401, 403):
                raise UpstreamUnavailable(f"Qdrant at {self.location} refused the API key: {detail}") from exc
            raise UpstreamUnavailable(f"Qdrant at {self.location} failed ({exc.status_code}): {detail}") from exc
        except ValueError as exc:
            # local mode's way of saying 404
            if str(exc).startswith("Collection ") and str(exc).endswith(" not found"):
                raise NotFound(str(exc)) from exc
            raise

    async def _ready(self) -> None:
        """Recover once, before the first operation."""
        if self._recovered:
            return
        async with self._ready_lock:
            if not self._recovered:
                await self._recover()
                self._recovered = True

    def _doc_lock(self, collection: str, doc_id: str) -> asyncio.Lock:
        key = (collection, doc_id)
        lock = self._doc_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._doc_locks[key] = lock
        return lock

    async def _meta(self, name: str) -> _Meta:
        validate_collection_name(name)
        meta = self._meta_cache.get(name)
        if meta is None:
            meta = await self._run(self._read_meta_sync, name)
            if meta is None:
                raise NotFound(f"The collection '{name}' does not exist.", param="collection")
            self._meta_cache[name] = meta
        return meta

    def _read_meta_sync(self, name: str) -> _Meta | None:
        """The collection's inferag metadata; None when it does not exist or is not inferag's."""
        if not self._client.collection_exists(name):
            return None
        raw = (self._client.get_collection(name).config.metadata or {}).get(_META_KEY)
        if not isinstance(raw, dict):
            return None
        return _Meta(dimension=int(raw["dimension"]), embed_model=str(raw["embed_model"]),
                     sparse_model=raw.get("sparse_model"), settings=dict(raw.get("metadata") or {}))

    def _count_sync(self, name: str) -> tuple[int, int]:
        """(live points, documents) of a collection."""
        points = self._client.count(name, count_filter=models.Filter(must=[_live_condition()]), exact=True).count
        registry = registry_name(name)
        documents = self._client.count(registry, exact=True).count if self._client.collection_exists(registry) else 0
        return points, documents

    def _info(self, name: str, meta: _Meta, counts: tuple[int, int]) -> CollectionInfo:
        return CollectionInfo(name=name, dimension=meta.dimension, embed_model=meta.embed_model,
                              sparse_model=meta.sparse_model or "", points=counts[0], documents=counts[1],
                              settings=meta.settings)

    # -- collections ------------------------------------------------------------------------------

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
        async with self._admin_lock:
            created = await self._run(self._create_collection_sync, name, wanted, metadata or {})
            self._meta_cache[name] = created
        return await self.get_collection(name)

    def _create_collection_sync(self, name: str, wanted: _Meta, metadata: dict[str, Any]) -> _Meta:
        client = self._client
        registry = registry_name(name)
        if client.collection_exists(name):
            existing = self._read_meta_sync(name)
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
            if not client.collection_exists(registry):
                self._create_registry_sync(name)
            return existing
        # the registry first, the collection last: a collection that exists always has its registry.
        # A registry without its collection is a crashed delete's leftover, so it starts afresh.
        if client.collection_exists(registry):
            client.delete_collection(registry)
        self._create_registry_sync(name)
        sparse: dict[str, models.SparseVectorParams] = {}
        if wanted.sparse_model:
            modifier = models.Modifier.IDF if wanted.sparse_model == "bm25" else None
            sparse[SPARSE] = models.SparseVectorParams(modifier=modifier)
        client.create_collection(
            name,
            vectors_config={DENSE: models.VectorParams(size=wanted.dimension, distance=models.Distance.COSINE)},
            sparse_vectors_config=sparse or None,
            metadata={_META_KEY: {"dimension": wanted.dimension, "embed_model": wanted.embed_model,
                                  "sparse_model": wanted.sparse_model, "metadata": metadata}},
            **self._layout,
        )
        if not self.embedded:
            for field in ("doc_id", "state", "version"):
                self._index_sync(name, field, models.PayloadSchemaType.KEYWORD)
        return wanted

    def _create_registry_sync(self, name: str) -> None:
        # no vectors: the registry is only read by id and scrolled
        self._client.create_collection(registry_name(name), vectors_config={}, **self._layout)
        if not self.embedded:
            self._index_sync(registry_name(name), "doc_id", models.PayloadSchemaType.KEYWORD)

    def _index_sync(self, collection: str, field: str, schema: models.PayloadSchemaType) -> None:
        """A payload index (server only: local mode ignores them); the first type asked for a field wins."""
        if (collection, field) in self._indexed:
            return
        try:
            self._client.create_payload_index(collection, field, field_schema=schema, wait=True)
        except UnexpectedResponse as exc:  # e.g. indexed before with another type: filtering still works
            log.warning("payload index %s.%s (%s) not created: %s", collection, field, schema, exc)
        self._indexed.add((collection, field))

    async def list_collections(self) -> list[CollectionInfo]:
        """inferag's collections (registries and other collections left out), by name, with counts."""
        await self._ready()
        return await self._run(self._list_collections_sync)

    def _list_collections_sync(self) -> list[CollectionInfo]:
        infos = []
        for description in self._client.get_collections().collections:
            name = description.name
            if name.startswith(REGISTRY_PREFIX) or not _COLLECTION_NAME.match(name):
                continue
            meta = self._read_meta_sync(name)
            if meta is not None:
                infos.append(self._info(name, meta, self._count_sync(name)))
        return sorted(infos, key=lambda info: info.name)

    async def embedding(self, name: str) -> tuple[int, str]:
        """(dimension, embedding model) of a collection from its cached metadata, without counting its points
        (`NotFound` if absent): the check a read or a write needs on every request."""
        await self._ready()
        meta = await self._meta(name)
        return meta.dimension, meta.embed_model

    async def collection_settings(self, name: str) -> dict[str, Any]:
        """The settings given at creation (the cached metadata; `NotFound` if absent)."""
        await self._ready()
        return dict((await self._meta(name)).settings)

    async def get_collection(self, name: str) -> CollectionInfo:
        await self._ready()
        meta = await self._meta(name)
        counts = await self._run(self._count_sync, name)
        return self._info(name, meta, counts)

    async def delete_collection(self, name: str) -> None:
        """Delete a collection, its document registry and its companions (`NotFound` if absent)."""
        await self._ready()
        await self._meta(name)
        async with self._admin_lock:
            await self._run(self._delete_collection_sync, name)
            self._meta_cache.pop(name, None)
            self._indexed = {key for key in self._indexed if key[0] not in (name, registry_name(name))
                             and not key[0].endswith(f"__{name}")}

    def _delete_collection_sync(self, name: str) -> None:
        # the collection first: a registry left alone by a crash is reset by the next create
        self._client.delete_collection(name)
        self._client.delete_collection(registry_name(name))
        companion = re.compile(rf"^_[a-z]+__{re.escape(name)}$")
        for other in self._client.get_collections().collections:
            if companion.match(other.name):
                self._client.delete_collection(other.name)

    async def count(self, collection: str) -> int:
        """Live chunk points of a collection."""
        await self._ready()
        await self._meta(collection)
        points, _ = await self._run(self._count_sync, collection)
        return points

    # -- documents --------------------------------------------------------------------------------

    async def replace_document(
        self,
        collection: str,
        *,
        doc_id: str,
        source: str | None,
        metadata: dict[str, Any] | None,
        chunks: Sequence[Chunk],
        dense: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector] | None = None,
    ) -> DocumentInfo:
        """Store a document's chunks in place of any earlier version, atomically.

        (1) the new version's points go in `staged`; (2) the registry entry moves to the new
        version, the commit point; (3) the new points turn `live` and every other version's go.
        Writers of one document take turns; in embedded mode (2)+(3) are one job on the one
        worker, so no reader sees both versions or neither.
        """
        await self._ready()
        meta = await self._meta(collection)
        points, info = self._build(collection, meta, doc_id=doc_id, source=source, metadata=metadata,
                                   chunks=chunks, dense=dense, sparse=sparse)
        async with self._doc_lock(collection, doc_id):
            await self._stage(collection, points)
            await self._run(self._commit_and_publish_sync, collection, info)
        return info

    def _build(self, collection: str, meta: _Meta, *, doc_id: str, source: str | None,
               metadata: dict[str, Any] | None, chunks: Sequence[Chunk], dense: Sequence[Sequence[float]],
               sparse: Sequence[SparseVector] | None,
               version: str | None = None) -> tuple[list[models.PointStruct], DocumentInfo]:
        """The staged points of a new version of a document, and its registry entry."""
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512:
            raise InvalidRequest("A document id must be a non-empty string of at most 512 characters.",
                                 param="doc_id")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidRequest("Document metadata must be an object.", param="metadata")
        if len(dense) != len(chunks):
            raise InvalidRequest(f"{len(chunks)} chunks but {len(dense)} dense vectors.", param="dense")
        for vector in dense:
            if len(vector) != meta.dimension:
                raise InvalidRequest(
                    f"The collection '{collection}' holds {meta.dimension}-dimensional vectors "
                    f"({meta.embed_model}); got {len(vector)}.", param="dense")
        if meta.sparse_model:
            if sparse is None or len(sparse) != len(chunks):
                raise InvalidRequest(f"The collection '{collection}' needs one sparse vector per chunk "
                                     f"({meta.sparse_model}).", param="sparse")
        elif sparse:
            raise InvalidRequest(f"The collection '{collection}' has no sparse vectors.", param="sparse")
        version = version or new_version()
        user_metadata = dict(metadata or {})
        points = []
        for index, chunk in enumerate(chunks):
            vectors: dict[str, Any] = {DENSE: [float(x) for x in dense[index]]}
            if meta.sparse_model and sparse is not None:
                vectors[SPARSE] = models.SparseVector(indices=list(sparse[index].indices),
                                                      values=[float(v) for v in sparse[index].values])
            payload = {
                "doc_id": doc_id,
                "chunk_index": index,
                "text": chunk.text,
                "start": chunk.start,
                "end": chunk.end,
                "tokens": chunk.tokens,
                "source": source,
                # the chunker's extras (headings...) under the document's own metadata, which wins
                "metadata": {**chunk.metadata, **user_metadata},
                "version": version,
                "state": STAGED,
            }
            points.append(models.PointStruct(id=chunk_point_id(doc_id, version, index), vector=vectors,
                                             payload=payload))
        info = DocumentInfo(doc_id=doc_id, source=source, chunks=len(chunks),
                            characters=max((chunk.end for chunk in chunks), default=0), metadata=user_metadata,
                            version=version, ingested_at=time.time())
        return points, info

    async def _stage(self, collection: str, points: Sequence[models.PointStruct]) -> None:
        """Step (1): the new version's points, `staged`, invisible to readers."""
        for start in range(0, len(points), UPSERT_BATCH):
            batch = list(points[start:start + UPSERT_BATCH])
            await self._run(self._client.upsert, collection, points=batch, wait=True)

    def _commit_sync(self, collection: str, info: DocumentInfo) -> None:
        """Step (2): the registry points at the new version; from here on it is the document."""
        self._client.upsert(
            registry_name(collection),
            points=[models.PointStruct(id=document_point_id(info.doc_id), vector={}, payload=info.model_dump())],
            wait=True,
        )

    def _publish_sync(self, collection: str, doc_id: str, version: str) -> None:
        """Step (3): every other version's points go away, then the committed version's go live.

        In this order a crash leaves committed points `staged`, which is all `recover()` looks for.
        """
        self._client.batch_update_points(
            collection,
            [
                models.DeleteOperation(delete=models.FilterSelector(
                    filter=_doc_filter(doc_id, version, other_versions=True))),
                models.SetPayloadOperation(set_payload=models.SetPayload(
                    payload={"state": LIVE}, filter=_doc_filter(doc_id, version))),
            ],
            wait=True,
        )

    def _commit_and_publish_sync(self, collection: str, info: DocumentInfo) -> None:
        self._commit_sync(collection, info)
        self._publish_sync(collection, info.doc_id, info.version)

    async def delete_document(self, collection: str, doc_id: str) -> None:
        """Remove a document: its registry entry, then its points (`NotFound` if absent)."""
        await self._ready()
        await self._meta(collection)
        async with self._doc_lock(collection, doc_id):
            if not await self._run(self._delete_document_sync, collection, doc_id):
                raise NotFound(f"The document '{doc_id}' does not exist in '{collection}'.", param="doc_id")

    def _delete_document_sync(self, collection: str, doc_id: str) -> bool:
        registry = registry_name(collection)
        point_id = document_point_id(doc_id)
        if not self._client.retrieve(registry, [point_id], with_payload=False):
            return False
        # staged first, so that whatever a crash leaves is found by `recover()`: with the registry
        # entry still there the document comes back whole, without it its points go
        self._client.set_payload(collection, payload={"state": STAGED}, points=_doc_filter(doc_id), wait=True)
        self._client.delete(registry, points_selector=models.PointIdsList(points=[point_id]), wait=True)
        self._client.delete(collection, points_selector=models.FilterSelector(filter=_doc_filter(doc_id)), wait=True)
        return True

    async def list_documents(self, collection: str, *, limit: int = 100,
                             offset: int = 0) -> tuple[list[DocumentInfo], int]:
        """A page of a collection's documents ordered by doc_id, and how many there are in all."""
        if limit < 0 or offset < 0:
            raise InvalidRequest("limit and offset must not be negative.", param="limit" if limit < 0 else "offset")
        await self._ready()
        await self._meta(collection)
        return await self._run(self._list_documents_sync, collection, limit, offset)

    def _list_documents_sync(self, collection: str, limit: int, offset: int) -> tuple[list[DocumentInfo], int]:
        registry = registry_name(collection)
        ids = sorted((record.payload or {}).get("doc_id", "") for record in self._scroll(registry, ["doc_id"]))
        page = ids[offset:offset + limit]
        if not page:
            return [], len(ids)
        records = self._client.retrieve(registry, [document_point_id(d) for d in page], with_payload=True)
        infos = sorted((_document_info(record) for record in records), key=lambda info: info.doc_id)
        return infos, len(ids)

    async def get_document(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]]:
        """A document's registry entry and its chunks in order (`NotFound` if absent)."""
        await self._ready()
        await self._meta(collection)
        found = await self._run(self._get_document_sync, collection, doc_id)
        if found is None:
            raise NotFound(f"The document '{doc_id}' does not exist in '{collection}'.", param="doc_id")
        return found

    def _get_document_sync(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]] | None:
        records = self._client.retrieve(registry_name(collection), [document_point_id(doc_id)], with_payload=True)
        if not records:
            return None
        info = _document_info(records[0])
        flt = models.Filter(must=[_match("doc_id", doc_id), _match("version", info.version), _live_condition()])
        chunks = [StoredChunk(**_stored_chunk(record)) for record in self._scroll(collection, True, flt)]
        return info, sorted(chunks, key=lambda chunk: chunk.chunk_index)

    def _scroll(self, collection: str, with_payload: bool | list[str],
                flt: models.Filter | None = None) -> list[models.Record]:
        records: list[models.Record] = []
        offset: models.ExtendedPointId | None = None
        while True:
            page, offset = self._client.scroll(collection, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset,
                                               with_payload=with_payload, with_vectors=False)
            records.extend(page)
            if offset is None:
                return records

    # -- search -----------------------------------------------------------------------------------

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

        `dense` queries the "dense" vector, `sparse` the "sparse" one, and `hybrid` fuses both
        inside Qdrant (`query_points` with two prefetches of `4 * top_k` and a `FusionQuery`, RRF or
        DBSF). Each collection is queried on its own and the hits are merged by score, which is
        sound because the scores are comparable across collections: cosine similarity of one
        embedding model (collections must share it), BM25 with each collection's own IDF (close for
        collections of similar text), and RRF, which only depends on ranks (DBSF normalizes per
        collection, so its merge is approximate).
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
        if not self.embedded and indexes:
            for name in names:
                for field, schema in indexes.items():
                    if (name, field) not in self._indexed:
                        await self._run(self._index_sync, name, field, schema)
        flt = models.Filter(must=[_live_condition(), *conditions])
        dense_query = [float(x) for x in dense] if dense is not None and mode != "sparse" else None
        sparse_query = None
        if sparse is not None and mode != "dense" and sparse.indices:
            sparse_query = models.SparseVector(indices=list(sparse.indices), values=[float(v) for v in sparse.values])
        if mode == "sparse" and sparse_query is None:
            return []  # nothing but stopwords: no term to match
        results = await asyncio.gather(*(
            self._run(self._search_sync, name, mode, dense_query, sparse_query, fusion, top_k, flt, score_threshold)
            for name in names
        ))
        hits = [hit for result in results for hit in result]
        hits.sort(key=lambda hit: (-hit.score, hit.collection, hit.doc_id, hit.chunk_index))
        return hits[:top_k]

    def _search_sync(self, collection: str, mode: RetrievalMode, dense: list[float] | None,
                     sparse: models.SparseVector | None, fusion: Fusion, top_k: int, flt: models.Filter,
                     score_threshold: float | None) -> list[Hit]:
        client = self._client
        common: dict[str, Any] = {"query_filter": flt, "limit": top_k, "with_payload": True,
                                  "score_threshold": score_threshold}
        if mode == "dense":
            response = client.query_points(collection, query=dense, using=DENSE, **common)
        elif mode == "sparse":
            response = client.query_points(collection, query=sparse, using=SPARSE, **common)
        else:
            prefetch = [models.Prefetch(query=dense, using=DENSE, limit=top_k * 4, filter=flt)]
            if sparse is not None:
                prefetch.append(models.Prefetch(query=sparse, using=SPARSE, limit=top_k * 4, filter=flt))
            method = models.Fusion.RRF if fusion == "rrf" else models.Fusion.DBSF
            response = client.query_points(collection, prefetch=prefetch, query=models.FusionQuery(fusion=method),
                                           **common)
        points = response.points
        if not points:
            return []
        # Only the registry's version counts. In embedded mode this job is atomic and the check never
        # drops anything; on a server it hides a version caught between another writer's steps.
        doc_ids = list({_payload(p).get("doc_id", "") for p in points})
        registry = client.retrieve(registry_name(collection), [document_point_id(d) for d in doc_ids],
                                   with_payload=["doc_id", "version"])
        versions = {_payload(r).get("doc_id"): _payload(r).get("version") for r in registry}
        return [
            Hit(**_stored_chunk(p), collection=collection, score=p.score)
            for p in points
            if versions.get(_payload(p).get("doc_id")) == _payload(p).get("version")
        ]

    # -- companion collections (hidden collections a feature keeps beside a collection) ---------------
    # Generic primitives, used by the graph layer (services/rag/graph/storage.py) for its entities and
    # chunk fragments. A companion is named `_<kind>__<collection>`: not a valid collection name, so
    # listings and recovery leave it alone. Filters are equality (a list: any of), all must hold.

    def companion_name(self, collection: str, kind: str) -> str:
        return f"_{kind}__{validate_collection_name(collection)}"

    @staticmethod
    def _companion_filter(must: Mapping[str, Any] | None = None,
                          must_not: Mapping[str, Any] | None = None) -> models.Filter | None:
        def condition(key: str, value: Any) -> models.FieldCondition:
            if isinstance(value, list):
                return models.FieldCondition(key=key, match=models.MatchAny(any=value))
            return _match(key, value)

        if not must and not must_not:
            return None
        return models.Filter(must=[condition(k, v) for k, v in (must or {}).items()] or None,
                             must_not=[condition(k, v) for k, v in (must_not or {}).items()] or None)

    async def create_companion(self, collection: str, kind: str, *, dimension: int,
                               indexes: Sequence[str] = ()) -> None:
        """Create the companion if absent, with one dense vector (cosine) and keyword indexes (server)."""
        name = self.companion_name(collection, kind)
        await self._ready()

        def create() -> None:
            if self._client.collection_exists(name):
                return
            self._client.create_collection(
                name, vectors_config={DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
                **self._layout)
            if not self.embedded:
                for field in indexes:
                    self._index_sync(name, field, models.PayloadSchemaType.KEYWORD)

        async with self._admin_lock:
            await self._run(create)

    async def companion_exists(self, collection: str, kind: str) -> bool:
        await self._ready()
        return await self._run(self._client.collection_exists, self.companion_name(collection, kind))

    async def drop_companion(self, collection: str, kind: str) -> None:
        name = self.companion_name(collection, kind)
        await self._ready()

        def drop() -> None:
            if self._client.collection_exists(name):
                self._client.delete_collection(name)

        async with self._admin_lock:
            await self._run(drop)
            self._indexed = {key for key in self._indexed if key[0] != name}

    async def upsert_companion(self, collection: str, kind: str,
                               points: Sequence[tuple[str, Sequence[float] | None, dict[str, Any]]]) -> None:
        """Write (id, dense vector or None, payload) points, in batches."""
        name = self.companion_name(collection, kind)
        structs = [models.PointStruct(id=pid, vector={DENSE: [float(x) for x in vector]} if vector is not None
                                      else {}, payload=payload) for pid, vector, payload in points]
        for start in range(0, len(structs), UPSERT_BATCH):
            await self._run(self._client.upsert, name, points=structs[start:start + UPSERT_BATCH], wait=True)

    async def delete_companion(self, collection: str, kind: str, *, ids: Sequence[str] | None = None,
                               must: Mapping[str, Any] | None = None,
                               must_not: Mapping[str, Any] | None = None) -> None:
        """Delete points by id, or those matching the filter."""
        name = self.companion_name(collection, kind)
        selector: models.PointIdsList | models.FilterSelector
        if ids is not None:
            if not ids:
                return
            selector = models.PointIdsList(points=list(ids))
        else:
            flt = self._companion_filter(must, must_not)
            if flt is None:
                raise ValueError("delete_companion needs ids or a filter")
            selector = models.FilterSelector(filter=flt)
        await self._run(self._client.delete, name, points_selector=selector, wait=True)

    async def retrieve_companion(self, collection: str, kind: str,
                                 ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        if not ids:
            return []
        records = await self._run(self._client.retrieve, self.companion_name(collection, kind), list(ids),
                                  with_payload=True)
        return [(str(r.id), _payload(r)) for r in records]

    async def scroll_companion(self, collection: str, kind: str, *, must: Mapping[str, Any] | None = None,
                               must_not: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Every point matching the filter (payloads, no vectors)."""
        flt = self._companion_filter(must, must_not)
        records = await self._run(self._scroll, self.companion_name(collection, kind), True, flt)
        return [(str(r.id), _payload(r)) for r in records]

    async def search_companion(self, collection: str, kind: str, vector: Sequence[float], *, limit: int,
                               must: Mapping[str, Any] | None = None) -> list[tuple[str, float, dict[str, Any]]]:
        """The `limit` points nearest to `vector` (cosine) among those matching the filter."""
        response = await self._run(self._client.query_points, self.companion_name(collection, kind),
                                   query=[float(x) for x in vector], using=DENSE, limit=limit,
                                   query_filter=self._companion_filter(must), with_payload=True)
        return [(str(p.id), p.score, _payload(p)) for p in response.points]

    async def count_companion(self, collection: str, kind: str, *, must: Mapping[str, Any] | None = None) -> int:
        result = await self._run(self._client.count, self.companion_name(collection, kind),
                                 count_filter=self._companion_filter(must), exact=True)
        return int(result.count)

    async def chunks_by_ids(self, collection: str, ids: Sequence[str],
                            filter: MetadataFilter | None = None) -> list[StoredChunk]:
        """The live chunks among `ids` that pass the metadata filter, in the order of `ids`."""
        conditions, _ = filter_conditions(filter)
        await self._ready()
        await self._meta(collection)
        if not ids:
            return []
        flt = models.Filter(must=[models.HasIdCondition(has_id=list(ids)), _live_condition(), *conditions])
        records = await self._run(self._scroll, collection, True, flt)
        found = {str(r.id): StoredChunk(**_stored_chunk(r)) for r in records}
        return [found[i] for i in ids if i in found]

    # -- recovery and lifecycle -------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Finish or roll back what a crash left; runs by itself before the store's first operation.

        Every interrupted write leaves `staged` points (see `_publish_sync`, `_delete_document_sync`),
        so only those are read, cheap on a large server collection: a document whose registry
        version is staged is published (step 3 again), staged points of any other version go.
        Returns {"published": points set live, "deleted": points removed}.
        """
        async with self._ready_lock:
            totals = await self._recover()
            self._recovered = True
        return totals

    async def _recover(self) -> dict[str, int]:
        names = await self._run(lambda: [c.name for c in self._client.get_collections().collections])
        totals = {"published": 0, "deleted": 0}
        for name in names:
            if name.startswith(REGISTRY_PREFIX):
                main = name[len(REGISTRY_PREFIX):]
                if self.embedded and main not in names:
                    # a crashed delete_collection's leftover (on a server it may be a create under way)
                    await self._run(self._client.delete_collection, name)
                continue
            if not _COLLECTION_NAME.match(name) or await self._run(self._read_meta_sync, name) is None:
                continue
            # documents with a writer under way in this process are that writer's to finish
            busy = {doc_id for (collection, doc_id), lock in list(self._doc_locks.items())
                    if collection == name and lock.locked()}
            published, deleted = await self._run(self._recover_collection_sync, name, busy)
            totals["published"] += published
            totals["deleted"] += deleted
            if published or deleted:
                log.warning("recovered collection %s: %d points published, %d deleted", name, published, deleted)
        return totals

    def _recover_collection_sync(self, name: str, busy: set[str]) -> tuple[int, int]:
        client = self._client
        registry = registry_name(name)
        if not client.collection_exists(registry):
            self._create_registry_sync(name)
        staged: dict[str, dict[str, list[models.ExtendedPointId]]] = {}  # doc_id -> version -> point ids
        for record in self._scroll(name, ["doc_id", "version"], models.Filter(must=[_match("state", STAGED)])):
            p = record.payload or {}
            staged.setdefault(str(p.get("doc_id")), {}).setdefault(str(p.get("version")), []).append(record.id)
        if not staged:
            return 0, 0
        committed = {
            (r.payload or {}).get("doc_id"): (r.payload or {}).get("version")
            for r in client.retrieve(registry, [document_point_id(d) for d in staged], with_payload=True)
        }
        published = deleted = 0
        for doc_id, versions in staged.items():
            if doc_id in busy:
                continue
            version = committed.get(doc_id)
            if version in versions:
                assert version is not None
                deleted += client.count(name, count_filter=_doc_filter(doc_id, version, other_versions=True),
                                        exact=True).count
                self._publish_sync(name, doc_id, version)
                published += len(versions.pop(version))
            # on a server, recent uncommitted points may be another replica's ingestion under way
            stale = [point_id for v, ids in versions.items()
                     if self.embedded or _version_age_s(v) >= STALE_STAGED_S for point_id in ids]
            for start in range(0, len(stale), _SCROLL_PAGE):
                client.delete(name, points_selector=models.PointIdsList(points=stale[start:start + _SCROLL_PAGE]),
                              wait=True)
            deleted += len(stale)
        return published, deleted

    async def ping(self) -> None:
        """Readiness: raises `UpstreamUnavailable` when the server cannot be reached, `NotReady` once closed."""
        if self._closed:
            raise NotReady("The vector store is closed.")
        await self._run(self._client.get_collections)
        await self._ready()

    async def close(self) -> None:
        """Close the client (releasing the folder lock in local mode); idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._client.close)
        finally:
            self._executor.shutdown(wait=True)

    def close_sync(self) -> None:
        """`close` for code without an event loop (e.g. a CLI); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._client.close).result()
        finally:
            self._executor.shutdown(wait=True)


def open_store(*, url: str | None, api_key: str | None = None, path: str | Path | None = None,
               shard_number: int | None = None, replication_factor: int | None = None) -> VectorStore:
    """A store on the Qdrant server at `url` if given, else embedded in `path` (`":memory:"`: in memory).

    Raises `StoreLocked` when the folder is open in another process.
    """
    return VectorStore(url=url, api_key=api_key, path=path, shard_number=shard_number,
                       replication_factor=replication_factor)



def check_folder_free(path: str | Path) -> None:
    """Raise `StoreLocked` now if another process holds the embedded store in `path` (a startup check:
    embedded Qdrant loads every point before it looks at its lock, and a server should not start half-way)."""
    if str(path) == ":memory:":
        return
    lock_path = Path(path).expanduser() / ".lock"
    if not lock_path.exists():
        return
    import portalocker

    with open(lock_path, "r+") as f:
        try:
            portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            raise StoreLocked(Path(path).resolve()) from None
        portalocker.unlock(f)
