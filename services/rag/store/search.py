"""Search of one collection: dense, sparse, or both fused inside Qdrant; only committed versions count."""

from __future__ import annotations

from typing import Any

from qdrant_client import models

from inferag_protocol.rag import Fusion, Hit, RetrievalMode

from .backend import Backend, Nearest, Record, SparseVector, payload_of
from .documents import DENSE, SPARSE, committed_only


def stored_chunk(record: Record) -> dict[str, Any]:
    p = payload_of(record)
    return {
        "id": record.id,
        "doc_id": p.get("doc_id", ""),
        "chunk_index": p.get("chunk_index", 0),
        "text": p.get("text", ""),
        "start": p.get("start", 0),
        "end": p.get("end", 0),
        "tokens": p.get("tokens", 0),
        "source": p.get("source"),
        "metadata": p.get("metadata") or {},
    }


def search_collection(backend: Backend, collection: str, mode: RetrievalMode, dense: list[float] | None,
                      sparse: SparseVector | None, fusion: Fusion, top_k: int, flt: models.Filter,
                      score_threshold: float | None, *, check_registry: bool = True) -> list[Hit]:
    """The collection's best `top_k` live chunks (`flt` already holds the `live` condition).

    Hybrid prefetches `4 * top_k` from each vector and fuses (RRF or DBSF) in the engine.
    `check_registry`: keep only the registry's versions (the caller may skip it where the live points
    are known to be exactly the committed versions).
    """
    searches: list[Nearest] = []
    if mode != "sparse" and dense is not None:
        searches.append(Nearest(DENSE, dense))
    if mode != "dense" and sparse is not None:
        searches.append(Nearest(SPARSE, sparse))
    points = backend.query(collection, searches, fusion=fusion if mode == "hybrid" else None, limit=top_k,
                           filter=flt, score_threshold=score_threshold)
    if points and check_registry:
        points = committed_only(backend, collection, points)
    return [Hit(**stored_chunk(p), collection=collection, score=p.score) for p in points]
