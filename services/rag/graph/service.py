"""The graph layer as the rest of the orchestrator sees it: ingestion hooks, graph retrieval, entity views.

One `CollectionGraph` per collection is loaded on first use (from the companion collection), checked
against the document registry (a document whose graph a crash left behind is extracted again from
its stored chunks, the graph of a document no longer there goes) and then kept in step with every
write this process makes. Writes to one collection's graph take turns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferag_protocol.graph import GRAPH_MODES, EntityDetail, EntityList, GraphMode, GraphStats
from inferag_protocol.rag import DocumentInfo, Hit, MetadataFilter, StoredChunk
from services.common.errors import Conflict, InvalidRequest, NotFound

from ..store import chunk_point_id
from .index import CollectionGraph, Fragment, Link, Mention
from .keyphrase import KeyphraseExtractor
from .storage import GraphStorage
from .text import entity_key
from .types import SETTING, ChunkGraph

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("graphml", "json")
# On a Qdrant server, how often a process checks whether another replica changed a graph it holds.
REFRESH_S = 2.0
# Graph writes wait to be written together (every write to embedded Qdrant is a commit): until the batch of
# documents is stored, or this many points are waiting.
FLUSH_POINTS = 1024


class Extractor(Protocol):
    mode: str
    embed_descriptions: bool

    async def extract(self, texts: Sequence[str]) -> list[ChunkGraph]: ...


class GraphStore(Protocol):
    """What the graph needs from the vector store beyond the companion primitives of `storage.py`."""

    embedded: bool

    async def collection_settings(self, name: str) -> dict[str, Any]: ...

    async def embedding(self, name: str) -> tuple[int, str]: ...

    async def list_documents(self, collection: str, *, limit: int = 100,
                             offset: int = 0) -> tuple[list[DocumentInfo], int]: ...

    async def get_document(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]]: ...

    async def chunks_by_ids(self, collection: str, ids: Sequence[str],
                            filter: MetadataFilter | None = None) -> list[StoredChunk]: ...


class Embed(Protocol):
    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class NoGraph(Conflict):
    code = "no_graph"

    def __init__(self, collection: str):
        super().__init__(
            f"The collection '{collection}' has no knowledge graph (it was created with graph 'off', or before "
            "graphs existed). Create a collection with graph 'keyphrase' or 'llm' and ingest into it.",
            param="collection",
        )


def graph_mode(settings: dict[str, Any]) -> GraphMode:
    """A collection's graph mode from its settings; collections made before graphs existed have none."""
    mode = settings.get(SETTING, "off")
    return mode if mode in GRAPH_MODES else "off"


@dataclass
class Extracted:
    """A document's chunk graphs, and vectors of the entities the collection's graph did not hold."""

    graphs: list[ChunkGraph]
    vectors: dict[str, list[float]]


def _chunk_mentions(graph: ChunkGraph) -> tuple[dict[str, Mention], dict[str, str]]:
    """One chunk's entities by key (names merged), and the key of each name."""
    keys = {e.name: entity_key(e.name, graph.language) for e in graph.entities}
    mentions: dict[str, Mention] = {}
    for e in graph.entities:
        if keys[e.name] and keys[e.name] not in mentions:
            mentions[keys[e.name]] = Mention(keys[e.name], e.name, e.type, e.description)
    return mentions, keys


def mentions_of(graphs: Sequence[ChunkGraph]) -> dict[str, Mention]:
    """The entities of a document's chunks by key (the first mention of each)."""
    out: dict[str, Mention] = {}
    for graph in graphs:
        for key, mention in _chunk_mentions(graph)[0].items():
            out.setdefault(key, mention)
    return out


def fragments_of(doc_id: str, version: str, graphs: Sequence[ChunkGraph]) -> list[Fragment]:
    """One fragment per chunk (empty ones too: they tell the document's graph is there), names merged by key."""
    out = []
    for index, graph in enumerate(graphs):
        mentions, keys = _chunk_mentions(graph)
        links = []
        for r in graph.relations:
            a = keys.get(r.source) or entity_key(r.source, graph.language)
            b = keys.get(r.target) or entity_key(r.target, graph.language)
            if a in mentions and b in mentions and a != b:
                links.append(Link(a, b, r.description, r.weight))
        out.append(Fragment(doc_id, version, index, chunk_point_id(doc_id, version, index),
                            list(mentions.values()), links))
    return out


@dataclass
class _Pending:
    """A collection's graph writes not in the store yet (the in-process graph has them already)."""

    graph: CollectionGraph
    fragments: dict[str, list[Fragment]] = field(default_factory=dict)  # the latest version of each document
    entities: dict[str, tuple[Mention, list[float]]] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)  # documents whose stored fragments of other versions go
    orphans: set[str] = field(default_factory=set)  # entities no fragment named any more, when last seen

    def points(self) -> int:
        return len(self.entities) + sum(len(f) for f in self.fragments.values())


class GraphService:
    def __init__(self, store: Any, embedder: Embed, extractors: dict[str, Extractor], *, hops: int = 2,
                 seeds: int = 8):
        self.store: GraphStore = store
        self.storage = GraphStorage(store)
        self.embedder = embedder
        self.extractors = extractors
        self.hops, self.seeds = hops, seeds
        self._graphs: dict[str, CollectionGraph] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._writing: set[tuple[str, str]] = set()
        self._markers: dict[str, str | None] = {}  # the marker each held graph was loaded at or last written
        self._checked: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}

    @classmethod
    def build(cls, store: Any, embedder: Embed, *, keyphrases: int = 8, llm: Extractor | None = None,
              hops: int = 2, seeds: int = 8) -> GraphService:
        extractors: dict[str, Extractor] = {"keyphrase": KeyphraseExtractor(keyphrases)}
        if llm is not None:
            extractors["llm"] = llm
        return cls(store, embedder, extractors, hops=hops, seeds=seeds)

    def _lock(self, collection: str) -> asyncio.Lock:
        return self._locks.setdefault(collection, asyncio.Lock())

    async def mode(self, collection: str) -> GraphMode:
        return graph_mode(await self.store.collection_settings(collection))

    async def require(self, collection: str) -> None:
        """NoGraph (409) unless the collection has a graph; NotFound without the collection."""
        if await self.mode(collection) == "off":
            raise NoGraph(collection)

    async def check_mode(self, collection: str, wanted: GraphMode) -> None:
        """Conflict (409) when an existing collection was created with another graph mode."""
        mode = await self.mode(collection)
        if mode != wanted:
            raise Conflict(f"The collection '{collection}' exists with graph '{mode}'; asked for '{wanted}'. "
                           "A collection's graph mode is set at creation.", param="graph")

    async def require_for_mode(self, collections: Sequence[str], mode: str) -> None:
        """A graph retrieval mode on a collection without a graph is a bad request (400)."""
        for name in collections:
            if await self.mode(name) == "off":
                raise InvalidRequest(
                    f"Retrieval mode '{mode}' needs a knowledge graph, and the collection '{name}' has none "
                    "(created with graph 'off'). Use mode 'hybrid', or a collection created with graph "
                    "'keyphrase' or 'llm'.", param="mode")

    def _extractor(self, mode: GraphMode) -> Extractor:
        extractor = self.extractors.get(mode)
        if extractor is None:
            raise InvalidRequest(f"Graph extraction '{mode}' is not available in this service.", param="graph")
        return extractor

    # ------------------------------------------------------------ ingestion hooks

    async def extract(self, collection: str, texts: Sequence[str]) -> Extracted | None:
        """The chunks' graphs and the vectors of the entities new to the collection (None when it has no graph):
        run while the chunks are embedded, so both embeddings share the embedder's batches."""
        mode = await self.mode(collection)
        if mode == "off":
            return None
        graphs = await self._extractor(mode).extract(texts)
        graph = await self.graph(collection)
        return Extracted(graphs, await self._vectors(collection, mode, graph, mentions_of(graphs)))

    async def _vectors(self, collection: str, mode: GraphMode, graph: CollectionGraph,
                       mentions: dict[str, Mention]) -> dict[str, list[float]]:
        """Vectors of those of the entities that have no point yet."""
        new = [k for k in mentions if k not in graph]
        if new and not self.store.embedded:  # another replica may have written some
            stored = await self.storage.stored_entities(collection, new)
            new = [k for k in new if k not in stored]
        if not new:
            return {}
        described = self._describes(mode)
        vectors = await self.embedder.embed([_entity_text(mentions[k], described) for k in new])
        return dict(zip(new, vectors, strict=True))

    async def documents_stored(self, collection: str, stored: Sequence[tuple[DocumentInfo, int]],
                               extracted: Extracted) -> None:
        """Put the stored documents' graphs in place of their old ones and write them together: `stored` is
        (the version written, its number of chunks) in the order of the texts `extract` was given."""
        keys = {(collection, info.doc_id) for info, _ in stored}
        self._writing |= keys
        try:
            graph = await self.graph(collection)
            async with self._lock(collection):
                at = 0
                for info, n in stored:
                    part = Extracted(extracted.graphs[at:at + n], extracted.vectors)
                    await self._write(collection, graph, info.doc_id, info.version, part)
                    at += n
                await self._flush_locked(collection)
        finally:
            self._writing -= keys

    async def _write(self, collection: str, graph: CollectionGraph, doc_id: str, version: str,
                     extracted: Extracted) -> None:
        fragments = fragments_of(doc_id, version, extracted.graphs)
        mentions = {m.key: m for f in fragments for m in f.mentions}
        vectors = dict(extracted.vectors)
        missing = {k: m for k, m in mentions.items() if k not in graph and k not in vectors}
        if missing:  # gone from the graph since the extraction (another document's delete)
            vectors.update(await self._vectors(collection, await self.mode(collection), graph, missing))
        pending = self._pending.setdefault(collection, _Pending(graph))
        pending.entities.update((k, (mentions[k], v)) for k, v in vectors.items() if k in mentions and k not in graph)
        # embedded, this process is the only writer: a document its graph does not hold has no fragments to delete
        if doc_id in graph.docs or not self.store.embedded:
            pending.replaced.add(doc_id)
        pending.fragments[doc_id] = fragments
        pending.orphans |= graph.replace_document(doc_id, fragments)
        if pending.points() >= FLUSH_POINTS:
            await self._flush_locked(collection)

    async def flush(self, collection: str) -> None:
        """Write the collection's waiting graph writes now (an ingestion request does before it answers)."""
        if collection in self._pending:
            async with self._lock(collection):
                await self._flush_locked(collection)

    async def _flush_locked(self, collection: str) -> None:
        """One upsert of the waiting entities and fragments, then the other versions and the orphans out."""
        pending = self._pending.get(collection)
        if pending is None:
            return
        graph = pending.graph
        entities = [(k, m, v) for k, (m, v) in pending.entities.items() if k in graph]
        fragments = [f for frs in pending.fragments.values() for f in frs]
        await self.storage.write_fragments(collection, fragments, entities)
        replaced = {doc: frs[0].version for doc, frs in pending.fragments.items() if doc in pending.replaced and frs}
        await self.storage.delete_other_versions(collection, replaced)
        await self._drop_orphans(collection, {k for k in pending.orphans if k not in graph})
        await self._touch(collection)
        if self._pending.get(collection) is pending:
            del self._pending[collection]

    async def _touch(self, collection: str) -> None:
        """Tell other replicas on the same Qdrant server that this graph changed (embedded: one process, no one)."""
        if not self.store.embedded:
            value = uuid.uuid4().hex
            await self.storage.set_marker(collection, value)
            self._markers[collection] = value

    def _describes(self, mode: GraphMode) -> bool:
        extractor = self.extractors.get(mode)
        return bool(extractor and extractor.embed_descriptions)

    async def _drop_orphans(self, collection: str, keys: set[str]) -> None:
        if not keys:
            return
        if not self.store.embedded:  # on a server, another replica's documents may name them
            keys = {k for k in keys if not await self.storage.still_mentioned(collection, k)}
        await self.storage.delete_entities(collection, keys)

    async def document_deleted(self, collection: str, doc_id: str) -> None:
        if await self.mode(collection) == "off":
            return
        graph = await self.graph(collection)
        async with self._lock(collection):
            pending = self._pending.setdefault(collection, _Pending(graph))
            pending.fragments.pop(doc_id, None)
            pending.replaced.discard(doc_id)
            pending.orphans |= graph.replace_document(doc_id, [])
            await self.storage.delete_document(collection, doc_id)
            await self._flush_locked(collection)

    def collection_deleted(self, collection: str) -> None:
        """Forget the in-process graph and its waiting writes (the store drops the companion with the collection)."""
        self._graphs.pop(collection, None)
        self._pending.pop(collection, None)

    async def close(self) -> None:
        """Write every waiting graph write (the service is stopping)."""
        for collection in list(self._pending):
            try:
                await self.flush(collection)
            except Exception:  # a load mends it
                log.exception("graph of %s: writing to the store failed", collection)

    # ------------------------------------------------------------ the in-process graph

    async def graph(self, collection: str) -> CollectionGraph:
        """The collection's graph, loaded and checked against the document registry on first use, and loaded
        again when another replica sharing the Qdrant server has changed it."""
        graph = self._graphs.get(collection)
        if graph is not None and not await self._stale(collection):
            return graph
        async with self._lock(collection):
            if self._graphs.get(collection) is graph:  # not loaded again while this waited
                await self._flush_locked(collection)
                self._graphs[collection] = await self._load(collection)
            return self._graphs[collection]

    async def _stale(self, collection: str) -> bool:
        if self.store.embedded:
            return False
        now = time.monotonic()
        if now - self._checked.get(collection, 0.0) < REFRESH_S:
            return False
        self._checked[collection] = now
        return await self.storage.marker(collection) != self._markers.get(collection)

    async def _load(self, collection: str) -> CollectionGraph:
        dimension, _ = await self.store.embedding(collection)
        await self.storage.ensure(collection, dimension)
        if not self.store.embedded:  # read first: a write while the fragments are read shows as a change
            self._markers[collection] = await self.storage.marker(collection)
            self._checked[collection] = time.monotonic()
        graph = CollectionGraph()
        for fragment in await self.storage.fragments(collection):
            graph.add(fragment)
        await self._sync(collection, graph)
        return graph

    async def _registry(self, collection: str) -> dict[str, str]:
        versions: dict[str, str] = {}
        offset = 0
        while True:
            page, total = await self.store.list_documents(collection, limit=1000, offset=offset)
            versions.update((d.doc_id, d.version) for d in page)
            offset += len(page)
            if not page or offset >= total:
                return versions

    async def _sync(self, collection: str, graph: CollectionGraph) -> None:
        """Mend what a crash between a document's write and its graph's left: extract again, or drop."""
        registry = await self._registry(collection)
        busy = {doc for (name, doc) in self._writing if name == collection}
        gone = [d for d in graph.docs if d not in registry and d not in busy]
        stale = [d for d, v in registry.items() if graph.versions.get(d) != v and d not in busy]
        if gone:
            pending = self._pending.setdefault(collection, _Pending(graph))
            for doc_id in gone:
                await self.storage.delete_document(collection, doc_id)
                pending.orphans |= graph.replace_document(doc_id, [])
        mode = await self.mode(collection)
        for doc_id in stale:
            try:
                info, chunks = await self.store.get_document(collection, doc_id)
            except NotFound:
                continue
            graphs = await self._extractor(mode).extract([c.text for c in chunks])
            vectors = await self._vectors(collection, mode, graph, mentions_of(graphs))
            await self._write(collection, graph, doc_id, info.version, Extracted(graphs, vectors))
        await self._flush_locked(collection)
        if gone or stale:
            log.warning("graph of %s: %d documents extracted again, %d removed", collection, len(stale), len(gone))

    async def rebuild(self, collection: str) -> GraphStats:
        """Drop the collection's graph and extract it again from every stored document."""
        await self.require(collection)
        async with self._lock(collection):
            self._graphs.pop(collection, None)
            self._pending.pop(collection, None)  # extracted again from the stored chunks with the rest
            await self.storage.drop(collection)
        await self.graph(collection)
        return await self.stats(collection)

    async def stats(self, collection: str) -> GraphStats:
        await self.require(collection)
        await self.flush(collection)  # the entity points counted are the graph's
        counts = (await self.graph(collection)).counts()
        return GraphStats(collection=collection, mode=await self.mode(collection), **counts,
                          entity_points=await self.storage.count_entities(collection))

    # ------------------------------------------------------------ retrieval

    async def _seeds(self, collection: str, graph: CollectionGraph, query: str,
                     dense: Sequence[float] | None) -> dict[str, float]:
        seeds = dict(graph.name_matches(query))
        if dense is not None and self.seeds:
            nearest = await self.storage.nearest_entities(collection, dense, self.seeds)
            best = max((s for _, s in nearest), default=0.0)
            for key, score in nearest:
                # only the entities about as close as the closest (a query is near many names a little)
                if key in graph and score >= 0.8 * best and score > seeds.get(key, 0.0):
                    seeds[key] = score**2
        return seeds

    async def search(self, collections: Sequence[str], query: str, dense: Sequence[float] | None, *,
                     top_k: int, filter: MetadataFilter | None = None) -> list[Hit]:
        """The best chunks reached through the collections' graphs, each with the entities and relations
        that brought it in; scores are comparable across collections only roughly (each graph's own)."""
        hits: list[Hit] = []
        for name in collections:
            graph = await self.graph(name)
            seeds = await self._seeds(name, graph, query, dense)
            walked = graph.walk(seeds, hops=self.hops, limit=top_k * 2 if filter else top_k)
            chunks = await self.store.chunks_by_ids(name, [w.chunk_id for w in walked], filter)
            found = {c.id: c for c in chunks}
            hits += [Hit(**found[w.chunk_id].model_dump(), collection=name, score=w.score, graph=w.evidence)
                     for w in walked if w.chunk_id in found]  # fmt: skip
        hits.sort(key=lambda h: (-h.score, h.collection, h.doc_id, h.chunk_index))
        return hits[:top_k]

    # ------------------------------------------------------------ entity views

    async def entities(self, collection: str, q: str | None, limit: int, embed: bool = True) -> EntityList:
        """Entities matching `q` (by name, then by meaning), or the most connected ones without it."""
        await self.require(collection)
        graph = await self.graph(collection)
        total = graph.counts()["entities"]
        if not q:
            return EntityList(data=graph.top_entities(limit), total=total)
        scores = dict(graph.name_matches(q))
        needle = entity_key(q)
        if needle:
            for key in list(graph.g.nodes):
                if needle in key and key not in scores:
                    scores[key] = 0.9 if key.startswith(needle) else 0.8
        if embed and len(scores) < limit:
            vector = (await self.embedder.embed([q]))[0]
            for key, score in await self.storage.nearest_entities(collection, vector, limit):
                if key in graph and key not in scores:
                    scores[key] = min(score, 0.79)
        ranked = sorted(scores, key=lambda k: (-scores[k], -graph.g.degree(k)))[:limit]
        return EntityList(data=[graph.info(k, round(scores[k], 6)) for k in ranked], total=total)

    async def entity(self, collection: str, entity_id: str) -> EntityDetail:
        await self.require(collection)
        graph = await self.graph(collection)
        key = graph.key_of(entity_id)
        if key is None:
            raise NotFound(f"The entity '{entity_id}' does not exist in the graph of '{collection}'.",
                           param="entity_id", code="entity_not_found")
        return graph.detail(key)

    async def export(self, collection: str, fmt: str) -> tuple[bytes, str]:
        """The whole graph as GraphML or node-link JSON (NetworkX's), with its media type."""
        if fmt not in EXPORT_FORMATS:
            raise InvalidRequest(f"Unknown export format '{fmt}': use graphml or json.", param="format")
        await self.require(collection)
        graph = await self.graph(collection)
        if fmt == "graphml":
            return await asyncio.to_thread(graph.graphml), "application/graphml+xml"
        return (await asyncio.to_thread(graph.node_link_json)).encode(), "application/json"


def _entity_text(mention: Mention, described: bool) -> str:
    return f"{mention.name}: {mention.description}" if described and mention.description else mention.name

