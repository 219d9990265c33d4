"""The write-ahead document protocol: documents replaced whole, by several writers at once, across crashes.

Each collection has a document registry (the hidden collection `_docs__<name>`), one point per
document naming its committed `version`. A write of a batch of documents (one request) is:

1. **stage**: every chunk point of every new version goes in with `state: staged`; readers skip them.
2. **commit**: each registry entry moves to its new version with a compare-and-set (Qdrant's
   conditional upsert: replace only if the entry still names the version this writer read; insert
   only if there was none), then a read-back. The entry records the versions it supersedes
   (`previous`) and `published: false`. From here on the new version is the document. Concurrent
   writers of one document (other replicas, other tasks) take effect in some order, each whole: a
   writer whose read-back names another version was overtaken (its write counts as made just
   before the other one, superseded at once), removes its own staged points and never commits again.
3. **publish**: the new versions' points turn `live`, the superseded versions' points go, and the
   entries are marked `published` (again only where they still name the version written).

A committed version is deleted only by the publish of the version that superseded it (or, overtaken,
by its own writer, once a newer version is committed), so no interleaving of two writers' steps deletes
a committed version (the fault of the earlier protocol, which deleted "every version but mine"). A
crash leaves either staged points that no entry names (deleted by recovery) or an unpublished entry
(published again by recovery, which is idempotent: any process may finish any writer's publish). Readers
keep only points of the registry's version, so nobody sees two versions of a document or half of one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import models

from inferag_protocol.rag import Chunk, DocumentInfo
from services.common.errors import InvalidRequest

from .backend import Backend, Point, Record, SparseVector, payload_of
from .filters import LIVE, STAGED, match

REGISTRY_PREFIX = "_docs__"
DENSE = "dense"
SPARSE = "sparse"
UPSERT_BATCH = 256
SCROLL_PAGE = 1024
_NAMESPACE = uuid.UUID("5b7c1f0e-8d6a-4c1e-9a51-3f2f6f1e4a20")


def registry_name(collection: str) -> str:
    """The hidden collection holding `collection`'s document registry."""
    return f"{REGISTRY_PREFIX}{collection}"


def chunk_point_id(doc_id: str, version: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"chunk\x00{doc_id}\x00{version}\x00{chunk_index}"))


def document_point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"doc\x00{doc_id}"))


def new_version() -> str:
    """A fresh, unique version: creation time (ms, hex) first, so recovery can tell its age."""
    return f"{time.time_ns() // 1_000_000:x}-{uuid.uuid4().hex[:12]}"


def version_created_ms(version: str) -> int:
    """When `version` was made (ms since the epoch; 0 for one that names no time)."""
    try:
        return int(version.split("-", 1)[0], 16)
    except ValueError:
        return 0


def version_age_s(version: str) -> float:
    created_ms = version_created_ms(version)
    return time.time() - created_ms / 1000 if created_ms else math.inf


@dataclass
class Staged:
    """A new version of a document, built and checked, not written yet."""

    info: DocumentInfo
    points: list[Point]


def build(collection: str, *, dimension: int, embed_model: str, sparse_model: str | None, doc_id: str,
          source: str | None, metadata: dict[str, Any] | None, chunks: Sequence[Chunk],
          dense: Sequence[Sequence[float]], sparse: Sequence[Any] | None, version: str | None = None) -> Staged:
    """The staged points of a new version of a document and its registry entry (inputs checked)."""
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512:
        raise InvalidRequest("A document id must be a non-empty string of at most 512 characters.", param="doc_id")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("Document metadata must be an object.", param="metadata")
    if len(dense) != len(chunks):
        raise InvalidRequest(f"{len(chunks)} chunks but {len(dense)} dense vectors.", param="dense")
    for vector in dense:
        if len(vector) != dimension:
            raise InvalidRequest(f"The collection '{collection}' holds {dimension}-dimensional vectors "
                                 f"({embed_model}); got {len(vector)}.", param="dense")
    if sparse_model:
        if sparse is None or len(sparse) != len(chunks):
            raise InvalidRequest(f"The collection '{collection}' needs one sparse vector per chunk "
                                 f"({sparse_model}).", param="sparse")
    elif sparse:
        raise InvalidRequest(f"The collection '{collection}' has no sparse vectors.", param="sparse")
    version = version or new_version()
    user_metadata = dict(metadata or {})
    points = []
    for index, chunk in enumerate(chunks):
        sparse_vectors = {}
        if sparse_model and sparse is not None:
            sparse_vectors[SPARSE] = SparseVector(list(sparse[index].indices), list(map(float, sparse[index].values)))
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
        points.append(Point(id=chunk_point_id(doc_id, version, index), payload=payload,
                            dense={DENSE: list(map(float, dense[index]))}, sparse=sparse_vectors))
    info = DocumentInfo(doc_id=doc_id, source=source, chunks=len(chunks),
                        characters=max((chunk.end for chunk in chunks), default=0), metadata=user_metadata,
                        version=version, ingested_at=round(time.time(), 3))  # ms: floats round-trip exactly
    return Staged(info=info, points=points)


def document_info(record: Record) -> DocumentInfo:
    p = payload_of(record)
    return DocumentInfo(doc_id=p["doc_id"], source=p.get("source"), chunks=p.get("chunks", 0),
                        characters=p.get("characters", 0), metadata=p.get("metadata") or {},
                        version=p["version"], ingested_at=p.get("ingested_at", 0.0))


def _versions_filter(versions: Sequence[str]) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="version", match=models.MatchAny(any=list(versions)))])


def _entries_at(pairs: Sequence[tuple[str, str]]) -> models.Filter:
    """Registry entries (point id, version): each matches only while it names that version.

    One id condition and one any-of on `version` (indexed) rather than a clause per entry: versions are
    unique to their document, so an entry matches exactly when it still names its own version.
    """
    return models.Filter(must=[models.HasIdCondition(has_id=[point_id for point_id, _ in pairs]),
                               models.FieldCondition(key="version",
                                                     match=models.MatchAny(any=[v for _, v in pairs]))])


# -- 1. stage -----------------------------------------------------------------------------------------------


def stage(backend: Backend, collection: str, batch: Sequence[Staged]) -> None:
    """The new versions' points, `staged`: invisible to readers, found by recovery if nothing commits them."""
    points = [p for staged in batch for p in staged.points]
    for start in range(0, len(points), UPSERT_BATCH):
        backend.upsert(collection, points[start:start + UPSERT_BATCH])


# -- 2. commit ----------------------------------------------------------------------------------------------


def _entry(staged: Staged, current: dict[str, Any] | None, order: int) -> Point:
    info = staged.info
    superseded: list[str] = []
    if current is not None:
        superseded = [current["version"]]
        if not current.get("published", True):  # its own publish may never come: take over its leftovers
            superseded += [v for v in current.get("previous") or [] if v != info.version]
    payload = {**info.model_dump(), "published": False, "order": current.get("order", order) if current else order}
    if superseded:  # absent means none (the engine's payload conversion costs more than the read's `or []`)
        payload["previous"] = superseded
    return Point(id=document_point_id(info.doc_id), payload=payload)


def commit(backend: Backend, collection: str, batch: Sequence[Staged]) -> dict[str, list[str]]:
    """Move each registry entry to its new version with one compare-and-set, then read back which landed.

    Returns doc_id -> the versions each committed one superseded, for `publish`. A document missing from it
    was *overtaken*: another writer committed or deleted it between this writer's read and its read-back.
    That writer's step is within this write's span, so the write is taken as made just before it and
    superseded at once, whether its compare-and-set landed first or failed. It is never committed again:
    if it had landed, the other writer has superseded it and that writer's publish deletes its points, so
    a second commit over the newer version would name a version with no points. The overtaken versions'
    staged points are the writer's to remove (`discard`).
    """
    registry = registry_name(collection)
    pending = {staged.info.doc_id: staged for staged in batch}
    ids = {document_point_id(doc_id): doc_id for doc_id in pending}
    current = {ids[r.id]: r.payload for r in backend.retrieve(registry, list(ids)) if r.id in ids}
    base_order = time.time_ns()
    fresh = [_entry(s, None, base_order + i) for i, (d, s) in enumerate(pending.items()) if d not in current]
    replacing = [_entry(s, current[d], base_order) for d, s in pending.items() if d in current]
    if fresh:
        backend.upsert(registry, fresh, insert_only=True)
    if replacing:
        expected = [(document_point_id(d), current[d]["version"]) for d in pending if d in current]
        backend.upsert(registry, replacing, only_if=_entries_at(expected))
    written = {p.payload["doc_id"]: p.payload.get("previous", []) for p in [*fresh, *replacing]}
    now = {ids[r.id]: r.payload for r in backend.retrieve(registry, list(ids), with_payload=["version"])
           if r.id in ids}
    return {doc_id: written[doc_id] for doc_id, staged in pending.items()
            if now.get(doc_id, {}).get("version") == staged.info.version}


def discard(backend: Backend, collection: str, versions: Sequence[str]) -> None:
    """Remove the staged points of versions no entry names (overtaken by another writer)."""
    if versions:
        backend.delete(collection, _versions_filter(list(versions)))


# -- 3. publish ---------------------------------------------------------------------------------------------


def publish(backend: Backend, collection: str, versions: dict[str, str], superseded: dict[str, list[str]]) -> None:
    """The committed versions go live, the versions they superseded go, their entries are marked published.

    Idempotent, and safe from any process at any time after the commit (recovery runs it too).
    """
    if not versions:
        return
    backend.set_payload(collection, {"state": LIVE}, _versions_filter(list(versions.values())))
    old = sorted({v for vs in superseded.values() for v in vs} - set(versions.values()))
    if old:
        backend.delete(collection, _versions_filter(old))
    entries = [(document_point_id(doc_id), version) for doc_id, version in versions.items()]
    backend.set_payload(registry_name(collection), {"published": True, "previous": []}, _entries_at(entries))


# -- reading, deleting --------------------------------------------------------------------------------------


def get_entry(backend: Backend, collection: str, doc_id: str) -> dict[str, Any] | None:
    records = backend.retrieve(registry_name(collection), [document_point_id(doc_id)])
    return records[0].payload if records else None


def live_chunks(backend: Backend, collection: str, doc_id: str, version: str) -> list[Record]:
    flt = models.Filter(must=[match("doc_id", doc_id), match("version", version), match("state", LIVE)])
    return scroll_all(backend, collection, flt)


def scroll_all(backend: Backend, collection: str, flt: models.Filter | None,
               with_payload: bool | list[str] = True) -> list[Record]:
    records: list[Record] = []
    offset: str | None = None
    while True:
        page, offset = backend.scroll(collection, filter=flt, limit=SCROLL_PAGE, offset=offset,
                                      with_payload=with_payload)
        records.extend(page)
        if offset is None:
            return records


def delete(backend: Backend, collection: str, doc_id: str) -> bool:
    """Remove a document: its points `staged` first (so whatever a crash leaves is recovery's), then its
    registry entry (compare-and-set), then its points. False if there was no such document.

    A version another writer committed meanwhile overtakes the delete, as in `commit`: the delete counts as
    made just before it, and that version stays.
    """
    entry = get_entry(backend, collection, doc_id)
    if entry is None:
        return False
    versions = [entry["version"], *(entry.get("previous") or [])]
    flt = models.Filter(must=[match("doc_id", doc_id),
                              models.FieldCondition(key="version", match=models.MatchAny(any=versions))])
    backend.set_payload(collection, {"state": STAGED}, flt)
    backend.delete(registry_name(collection), _entries_at([(document_point_id(doc_id), entry["version"])]))
    backend.delete(collection, flt)
    return True


def committed_only(backend: Backend, collection: str, records: Sequence[Record]) -> list[Record]:
    """The chunk records whose version is their document's committed one (on a server another writer may
    be between its steps), in their order."""
    versions = registry_versions(backend, collection, list({payload_of(r).get("doc_id", "") for r in records}))
    return [r for r in records if versions.get(payload_of(r).get("doc_id", "")) == payload_of(r).get("version")]


def registry_versions(backend: Backend, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
    """doc_id -> committed version, for the documents that have one."""
    ids = {document_point_id(d): d for d in doc_ids}
    records = backend.retrieve(registry_name(collection), list(ids), with_payload=["version"])
    return {ids[r.id]: r.payload.get("version", "") for r in records if r.id in ids}
