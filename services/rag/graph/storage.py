"""Where a collection's graph lives: a companion collection in the same Qdrant, through the store's primitives.

Two kinds of points in `_graph__<collection>`:

- an entity (id: `entity_id(key)`): its name (and description, for the LLM extractor) embedded as the
  dense vector, so a query finds entities by meaning; payload `kind=entity, key, name, type, description`;
- a chunk fragment (id: the chunk's own point id): payload-only, `kind=chunk`, the document, version
  and chunk it comes from, the entity keys it mentions and its relations (see `index.Fragment`).

Fragments are written per document version, like the chunks: the new version's go in, then every
other version's are deleted, so replacing a document touches only its own points, and an entity
survives as long as some fragment names it. Only the store's generic companion primitives are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .index import Fragment, Mention
from .text import entity_id

KIND = "graph"
ENTITY = "entity"
CHUNK = "chunk"
# One point whose payload changes with every write: how replicas sharing a Qdrant server see that their
# in-process graph is behind.
MARKER_ID = entity_id("\x00graph marker")


class CompanionStore(Protocol):
    """The store primitives this module needs (services/rag/store.py implements them)."""

    embedded: bool

    async def create_companion(self, collection: str, kind: str, *, dimension: int,
                               indexes: Sequence[str] = ()) -> None: ...

    async def companion_exists(self, collection: str, kind: str) -> bool: ...

    async def drop_companion(self, collection: str, kind: str) -> None: ...

    async def upsert_companion(self, collection: str, kind: str,
                               points: Sequence[tuple[str, Sequence[float] | None, dict[str, Any]]]) -> None: ...

    async def delete_companion(self, collection: str, kind: str, *, ids: Sequence[str] | None = None,
                               must: dict[str, Any] | None = None, must_not: dict[str, Any] | None = None) -> None: ...

    async def retrieve_companion(self, collection: str, kind: str,
                                 ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]: ...

    async def scroll_companion(self, collection: str, kind: str, *, must: dict[str, Any] | None = None,
                               must_not: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]: ...

    async def search_companion(self, collection: str, kind: str, vector: Sequence[float], *, limit: int,
                               must: dict[str, Any] | None = None) -> list[tuple[str, float, dict[str, Any]]]: ...

    async def count_companion(self, collection: str, kind: str, *, must: dict[str, Any] | None = None) -> int: ...


class GraphStorage:
    def __init__(self, store: CompanionStore):
        self.store = store

    async def ensure(self, collection: str, dimension: int) -> None:
        await self.store.create_companion(collection, KIND, dimension=dimension,
                                          indexes=("kind", "doc_id", "version", "entities"))

    async def exists(self, collection: str) -> bool:
        return await self.store.companion_exists(collection, KIND)

    async def drop(self, collection: str) -> None:
        await self.store.drop_companion(collection, KIND)

    async def fragments(self, collection: str) -> list[Fragment]:
        """Every chunk fragment of the collection (what the in-process graph is built from)."""
        points = await self.store.scroll_companion(collection, KIND, must={"kind": CHUNK})
        return [Fragment.from_payload(payload) for _, payload in points]

    async def stored_entities(self, collection: str, keys: Iterable[str]) -> set[str]:
        """Those of `keys` that have an entity point."""
        ids = {entity_id(k): k for k in keys}
        found = await self.store.retrieve_companion(collection, KIND, list(ids))
        return {ids[i] for i, _ in found if i in ids}

    async def write_fragments(self, collection: str, fragments: Sequence[Fragment],
                              entities: Sequence[tuple[str, Mention, Sequence[float]]] = ()) -> None:
        """Fragments and new entities ((key, mention, vector)) in one write, the entities first: a fragment never
        names an entity that has no point."""
        await self.store.upsert_companion(collection, KIND, [
            *((entity_id(key), vector, {"kind": ENTITY, "key": key, "name": m.name, "type": m.type,
                                        "description": m.description}) for key, m, vector in entities),
            *((f.chunk_id, None, {"kind": CHUNK, **f.payload()}) for f in fragments),
        ])  # fmt: skip

    async def delete_other_versions(self, collection: str, versions: dict[str, str]) -> None:
        """The fragments of every version but the given one ({doc_id: version}) of these documents."""
        if versions:
            await self.store.delete_companion(collection, KIND, must={"kind": CHUNK, "doc_id": list(versions)},
                                              must_not={"version": list(versions.values())})

    async def delete_document(self, collection: str, doc_id: str) -> None:
        await self.store.delete_companion(collection, KIND, must={"kind": CHUNK, "doc_id": doc_id})

    async def still_mentioned(self, collection: str, key: str) -> bool:
        return await self.store.count_companion(collection, KIND, must={"kind": CHUNK, "entities": key}) > 0

    async def delete_entities(self, collection: str, keys: Iterable[str]) -> None:
        await self.store.delete_companion(collection, KIND, ids=[entity_id(k) for k in keys])

    async def nearest_entities(self, collection: str, vector: Sequence[float], limit: int) -> list[tuple[str, float]]:
        """(key, cosine) of the entities nearest to a query vector."""
        found = await self.store.search_companion(collection, KIND, vector, limit=limit, must={"kind": ENTITY})
        return [(str(payload.get("key", "")), score) for _, score, payload in found]

    async def marker(self, collection: str) -> str | None:
        found = await self.store.retrieve_companion(collection, KIND, [MARKER_ID])
        return str(found[0][1].get("value")) if found else None

    async def set_marker(self, collection: str, value: str) -> None:
        await self.store.upsert_companion(collection, KIND, [(MARKER_ID, None, {"kind": "marker", "value": value})])

    async def count_entities(self, collection: str) -> int:
        return await self.store.count_companion(collection, KIND, must={"kind": ENTITY})
