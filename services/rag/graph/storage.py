"""Where a collection's graph lives: a companion collection in the same Qdrant, through the store's primitives.

Two kinds of points in `_graph__<collection>`:

- an entity (id: `entity_id(key)`): its name (and description, for the LLM extractor) embedded as the
  dense vector, so a query finds entities by meaning; payload `kind=entity, key, name, type, description`;
- a chunk fragment (id: the chunk's own point id): payload-only, `kind=chunk`, the document, version
  and chunk it comes from, the entity keys it mentions and its relations (see `index.Fragment`).

Fragments are written per document version, like the chunks: the new version's go in, then every
other version's are deleted, so replacing a document touches only its own points, and an entity
survives as long as some fragment names it. Only the store's hidden-collection primitives are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from qdrant_client import models

from ..store import Point, Record
from .index import Fragment, Mention
from .text import entity_id

KIND = "graph"
VECTOR = "dense"
ENTITY = "entity"
CHUNK = "chunk"
INDEXES = {"kind": "keyword", "doc_id": "keyword", "version": "keyword", "entities": "keyword"}
PAGE = 1024
# One point whose payload changes with every write: how replicas sharing a Qdrant server see that their
# in-process graph is behind.
MARKER_ID = entity_id("\x00graph marker")


class HiddenStore(Protocol):
    """The store's hidden-collection primitives this module needs (services/rag/store/vector_store.py)."""

    async def create_hidden(self, kind: str, collection: str = "", *, dense: dict[str, int] | None = None,
                            indexes: dict[str, str] | None = None) -> str: ...

    async def upsert_points(self, name: str, points: Sequence[Point]) -> None: ...

    async def delete_points(self, name: str, selector: models.Filter | Sequence[str]) -> None: ...

    async def retrieve_points(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Record]: ...

    async def scroll_points(self, name: str, *, filter: models.Filter | None = None, limit: int = 256,
                            offset: str | None = None) -> tuple[list[Record], str | None]: ...

    async def search_points(self, name: str, vector: Sequence[float], *, using: str, limit: int = 10,
                            filter: models.Filter | None = None) -> list[Record]: ...

    async def count_points(self, name: str, filter: models.Filter | None = None) -> int: ...

    async def drop_hidden(self, name: str) -> None: ...


def _where(must: Mapping[str, Any] | None = None, must_not: Mapping[str, Any] | None = None) -> models.Filter:
    """Equality conditions (a list: any of), all of `must` holding and none of `must_not`."""
    def condition(key: str, value: Any) -> models.FieldCondition:
        match = models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value)
        return models.FieldCondition(key=key, match=match)

    return models.Filter(must=[condition(k, v) for k, v in (must or {}).items()] or None,
                         must_not=[condition(k, v) for k, v in (must_not or {}).items()] or None)


def companion(collection: str) -> str:
    """The graph's hidden collection (deleted, snapshotted and restored with its collection by the store)."""
    return f"_{KIND}__{collection}"


class GraphStorage:
    def __init__(self, store: HiddenStore):
        self.store = store

    async def ensure(self, collection: str, dimension: int) -> None:
        await self.store.create_hidden(KIND, collection, dense={VECTOR: dimension}, indexes=INDEXES)

    async def drop(self, collection: str) -> None:
        await self.store.drop_hidden(companion(collection))

    async def fragments(self, collection: str) -> list[Fragment]:
        """Every chunk fragment of the collection (what the in-process graph is built from)."""
        out: list[Fragment] = []
        offset: str | None = None
        while True:
            page, offset = await self.store.scroll_points(companion(collection), filter=_where({"kind": CHUNK}),
                                                          limit=PAGE, offset=offset)
            out += [Fragment.from_payload(r.payload) for r in page]
            if offset is None:
                return out

    async def stored_entities(self, collection: str, keys: Iterable[str]) -> set[str]:
        """Those of `keys` that have an entity point."""
        ids = {entity_id(k): k for k in keys}
        found = await self.store.retrieve_points(companion(collection), list(ids))
        return {ids[r.id] for r in found if r.id in ids}

    async def write_fragments(self, collection: str, fragments: Sequence[Fragment],
                              entities: Sequence[tuple[str, Mention, Sequence[float]]] = ()) -> None:
        """Fragments and new entities ((key, mention, vector)) in one write, the entities first: a fragment never
        names an entity that has no point."""
        await self.store.upsert_points(companion(collection), [
            *(Point(entity_id(key), {"kind": ENTITY, "key": key, "name": m.name, "type": m.type,
                                     "description": m.description}, dense={VECTOR: [float(x) for x in vector]})
              for key, m, vector in entities),
            *(Point(f.chunk_id, {"kind": CHUNK, **f.payload()}) for f in fragments),
        ])  # fmt: skip

    async def delete_other_versions(self, collection: str, versions: dict[str, str]) -> None:
        """The fragments of every version but the given one ({doc_id: version}) of these documents."""
        if versions:
            await self.store.delete_points(companion(collection), _where(
                {"kind": CHUNK, "doc_id": list(versions)}, {"version": list(versions.values())}))

    async def delete_document(self, collection: str, doc_id: str) -> None:
        await self.store.delete_points(companion(collection), _where({"kind": CHUNK, "doc_id": doc_id}))

    async def still_mentioned(self, collection: str, key: str) -> bool:
        return await self.store.count_points(companion(collection), _where({"kind": CHUNK, "entities": key})) > 0

    async def delete_entities(self, collection: str, keys: Iterable[str]) -> None:
        ids = [entity_id(k) for k in keys]
        if ids:
            await self.store.delete_points(companion(collection), ids)

    async def nearest_entities(self, collection: str, vector: Sequence[float], limit: int) -> list[tuple[str, float]]:
        """(key, cosine) of the entities nearest to a query vector."""
        found = await self.store.search_points(companion(collection), vector, using=VECTOR, limit=limit,
                                               filter=_where({"kind": ENTITY}))
        return [(str(r.payload.get("key", "")), r.score) for r in found]

    async def marker(self, collection: str) -> str | None:
        found = await self.store.retrieve_points(companion(collection), [MARKER_ID])
        return str(found[0].payload.get("value")) if found else None

    async def set_marker(self, collection: str, value: str) -> None:
        await self.store.upsert_points(companion(collection), [Point(MARKER_ID, {"kind": "marker", "value": value})])

    async def count_entities(self, collection: str) -> int:
        return await self.store.count_points(companion(collection), _where({"kind": ENTITY}))
