"""The store protocol: collections of points in a Qdrant engine, on a server or embedded in the process.

`Backend` is the one interface the rest of the store is written against; `ServerBackend`
(qdrant-client against a Qdrant server, `server.py`) and `EmbeddedBackend` (qdrant-edge, one
shard folder per collection, `embedded.py`) implement it, and one congruence suite
(`tests/unit/test_store.py`) runs against both. Its methods are synchronous and thread-safe
(`VectorStore` calls them from a thread pool, off the event loop); filters are qdrant-client's
`models.Filter`, the lingua franca of both engines.

Points and records are plain dataclasses: a point has named dense vectors, named sparse vectors
and a JSON payload; ids are UUID strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from qdrant_client import models

from services.common.errors import InferagError
from services.common.vectors import SparseVector

PayloadSchema = Literal["keyword", "integer", "float", "bool"]
Fusion = Literal["rrf", "dbsf"]


class _FolderUnusable(InferagError):
    """The store's folder cannot be opened; `message` says why, with `{folder}` in it."""

    status_code = 503
    type = "service_unavailable"
    message_template = ""

    def __init__(self, folder: str | Path):
        super().__init__(self.message_template.format(folder=folder))


class StoreLocked(_FolderUnusable):
    """The store's folder is open in another process (the embedded engine allows one)."""

    code = "store_locked"
    message_template = (
        "The vector store folder {folder} is in use by another process (embedded Qdrant allows one). "
        "Stop the other process, or run a Qdrant server and set QDRANT_URL."
    )


class StoreNeedsMigration(_FolderUnusable):
    """The folder holds a store written by the previous version (qdrant-client's local mode)."""

    code = "store_needs_migration"
    message_template = (
        "The vector store folder {folder} was written by an earlier inferag (qdrant-client's local mode). "
        "Stop the stack and run `inferag collections migrate` once: it copies every collection into the "
        "embedded Qdrant engine and keeps the old folder as a backup."
    )


@dataclass
class Point:
    """A point to write: named dense vectors, named sparse vectors, payload."""

    id: str
    payload: dict[str, Any]
    dense: dict[str, list[float]] = field(default_factory=dict)
    sparse: dict[str, SparseVector] = field(default_factory=dict)


@dataclass
class Record:
    """A point read back; `score` for query results, vectors only when asked for."""

    id: str
    payload: dict[str, Any]
    score: float = 0.0
    dense: dict[str, list[float]] = field(default_factory=dict)
    sparse: dict[str, SparseVector] = field(default_factory=dict)


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection holds: dense vectors (name -> dimension, cosine), sparse vectors
    (name -> whether Qdrant applies the IDF modifier), and JSON metadata kept with it."""

    dense: dict[str, int]
    sparse: dict[str, bool] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Nearest:
    """One nearest-neighbour search: a dense or sparse query vector against the named vector `using`."""

    using: str
    vector: list[float] | SparseVector


Selector = models.Filter | Sequence[str]


class Backend(Protocol):
    """Collections of points in one Qdrant engine. Every method is blocking and thread-safe."""

    @property
    def kind(self) -> Literal["server", "embedded"]: ...

    @property
    def location(self) -> str: ...

    def list_collections(self) -> list[str]:
        """Every collection's name, hidden ones included."""

    def spec(self, name: str) -> CollectionSpec | None:
        """The collection's vectors and metadata; None when it does not exist (or is not one of ours)."""

    def exists(self, name: str) -> bool: ...

    def create(self, name: str, spec: CollectionSpec) -> None:
        """A new, empty collection (an existing one is an error of the engine's)."""

    def drop(self, name: str) -> None:
        """Delete a collection and its points; nothing when it does not exist."""

    def upsert(self, name: str, points: Sequence[Point], *, only_if: models.Filter | None = None,
               insert_only: bool = False) -> None:
        """Write points. `only_if`: an existing point is replaced only if it matches (a compare-and-set);
        `insert_only`: an existing point is left alone. Absent points are inserted either way."""

    def delete(self, name: str, selector: Selector) -> None:
        """Delete the points matching a filter, or the listed ids."""

    def set_payload(self, name: str, payload: dict[str, Any], selector: Selector) -> None:
        """Merge `payload` into the payload of the selected points."""

    def retrieve(self, name: str, ids: Sequence[str], *, with_payload: bool | list[str] = True,
                 with_vectors: bool = False) -> list[Record]: ...

    def scroll(self, name: str, *, filter: models.Filter | None = None, limit: int = 1024,
               offset: str | None = None, with_payload: bool | list[str] = True,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        """A page of points in id order from `offset`, and the id the next page starts at (None: the end)."""

    def ordered(self, name: str, *, key: str, limit: int, offset: int = 0, filter: models.Filter | None = None,
                with_payload: bool | list[str] = True) -> list[Record]:
        """Points in ascending order of the integer payload field `key` (indexed), skipping `offset`."""

    def count(self, name: str, filter: models.Filter | None = None) -> int:
        """Exact count of the points matching `filter`."""

    def query(self, name: str, searches: Sequence[Nearest], *, fusion: Fusion | None = None, limit: int,
              filter: models.Filter | None = None, score_threshold: float | None = None,
              with_payload: bool | list[str] = True) -> list[Record]:
        """The best `limit` points, best first: one search as it is, or several fused (RRF or DBSF) after
        prefetching `4 * limit` candidates each; `filter` applies to every stage."""

    def index(self, name: str, field: str, schema: PayloadSchema) -> None:
        """A payload index on `field` (the first schema asked for a field stays)."""

    def snapshot(self, name: str, target: Path) -> None:
        """Write a Qdrant shard snapshot of the collection (the engine's own tar format) to `target`."""

    def optimize(self, name: str) -> bool:
        """Build what the engine builds lazily (HNSW and payload indexes, merges); True if it did work."""

    def close(self) -> None: ...


def payload_of(record: Record) -> dict[str, Any]:
    return record.payload or {}
