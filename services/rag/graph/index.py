"""The traversal graph of one collection, in process: NetworkX nodes for entities, edges for relations.

It is built from the chunk fragments kept in the store (`storage.py`) and kept in step with every
write: a fragment is what one chunk of one document version contributed (its entities and
relations), so replacing or deleting a document removes exactly its fragments; an entity other
documents mention keeps their links, an entity nothing mentions any more goes.

Retrieval (`walk`) starts from seed entities (matched by name or by vector), expands one or two hops
along relations and co-mentions in a chunk, and ranks the chunks that mention what it reached, each
entity counting by its specificity (1 / the chunks that mention it, as HippoRAG weighs nodes), so a
hub such as "model" in a course about models weighs little and does not spread. The constants were
chosen on the dev questions of datasets/multihop (see its README).
"""

from __future__ import annotations

import heapq
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from inferag_protocol.graph import (
    EntityDetail,
    EntityInfo,
    EntityRef,
    GraphEvidence,
    LinkedChunk,
    Relation,
    RelationRef,
)

from .text import entity_id, entity_key, key_words

ChunkKey = tuple[str, int]  # (doc_id, chunk_index)

COMENTION = 0.5  # reach kept through a co-mention in a chunk (through a relation: weight / (weight + 1), at least this)
SPECIFICITY = 1.0  # power of 1 / chunks mentioning an entity
FANOUT = 12  # neighbours followed from one entity
FRONTIER = 24  # entities expanded per hop
HUB_CHUNKS = 5000  # an entity in more chunks than this is too general to follow
MAX_NAME_WORDS = 6


@dataclass
class Mention:
    key: str
    name: str
    type: str
    description: str = ""


@dataclass
class Link:
    source: str  # entity key
    target: str
    description: str = ""
    weight: float = 1.0


@dataclass
class Fragment:
    """What one chunk of one document version put in the graph (a point of the companion collection)."""

    doc_id: str
    version: str
    chunk_index: int
    chunk_id: str  # the chunk's point id in the collection
    mentions: list[Mention] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    @property
    def chunk(self) -> ChunkKey:
        return (self.doc_id, self.chunk_index)

    def payload(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "version": self.version,
            "chunk_index": self.chunk_index,
            "chunk_id": self.chunk_id,
            "entities": [m.key for m in self.mentions],
            "mentions": [[m.key, m.name, m.type, m.description] for m in self.mentions],
            "links": [[r.source, r.target, r.description, r.weight] for r in self.links],
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Fragment:
        return cls(
            doc_id=str(p["doc_id"]), version=str(p["version"]), chunk_index=int(p["chunk_index"]),
            chunk_id=str(p["chunk_id"]),
            mentions=[Mention(str(k), str(n), str(t), str(d)) for k, n, t, d in p.get("mentions") or []],
            links=[Link(str(a), str(b), str(d), float(w)) for a, b, d, w in p.get("links") or []],
        )  # fmt: skip


@dataclass
class Reached:
    score: float
    hop: int
    via: str | None = None  # the entity it was reached from
    relation: str = ""  # the description of the step


@dataclass
class ChunkHit:
    doc_id: str
    chunk_index: int
    chunk_id: str
    score: float
    evidence: GraphEvidence


class CollectionGraph:
    """Entities (nodes, by key), relations (edges) and the chunks that mention each entity."""

    def __init__(self) -> None:
        self.g = nx.Graph()
        self.fragments: dict[ChunkKey, Fragment] = {}
        self.docs: dict[str, set[int]] = {}
        self.versions: dict[str, str] = {}
        self.by_id: dict[str, str] = {}  # entity id -> key

    # ------------------------------------------------------------ writes

    def add(self, fragment: Fragment) -> None:
        """Add one chunk's fragment (replacing what the same chunk had)."""
        if fragment.chunk in self.fragments:
            self._remove(self.fragments[fragment.chunk])
        self.fragments[fragment.chunk] = fragment
        self.docs.setdefault(fragment.doc_id, set()).add(fragment.chunk_index)
        self.versions[fragment.doc_id] = fragment.version
        for m in fragment.mentions:
            if m.key not in self.g:
                self.g.add_node(m.key, names=Counter(), types=Counter(), descriptions={}, chunks=set())
                self.by_id[entity_id(m.key)] = m.key
            node = self.g.nodes[m.key]
            node["names"][m.name] += 1
            node["types"][m.type] += 1
            if m.description:
                node["descriptions"][fragment.chunk] = m.description
            node["chunks"].add(fragment.chunk)
        for r in fragment.links:
            if r.source not in self.g or r.target not in self.g or r.source == r.target:
                continue
            if not self.g.has_edge(r.source, r.target):
                self.g.add_edge(r.source, r.target, weight=0.0, links={})
            edge = self.g.edges[r.source, r.target]
            edge["links"][fragment.chunk] = (r.description, r.weight)
            edge["weight"] += r.weight

    def _remove(self, fragment: Fragment) -> None:
        for r in fragment.links:
            if not self.g.has_edge(r.source, r.target):
                continue
            edge = self.g.edges[r.source, r.target]
            old = edge["links"].pop(fragment.chunk, None)
            if old is not None:
                edge["weight"] -= old[1]
            if not edge["links"]:
                self.g.remove_edge(r.source, r.target)
        for m in fragment.mentions:
            if m.key not in self.g:
                continue
            node = self.g.nodes[m.key]
            node["chunks"].discard(fragment.chunk)
            node["descriptions"].pop(fragment.chunk, None)
            for counter, value in ((node["names"], m.name), (node["types"], m.type)):
                counter[value] -= 1
                if counter[value] <= 0:
                    del counter[value]
            if not node["chunks"]:
                self.g.remove_node(m.key)
                self.by_id.pop(entity_id(m.key), None)

    def remove_document(self, doc_id: str) -> set[str]:
        """Drop a document's fragments; returns the keys of the entities it mentioned."""
        touched: set[str] = set()
        for index in self.docs.pop(doc_id, set()):
            fragment = self.fragments.pop((doc_id, index), None)
            if fragment is not None:
                touched.update(m.key for m in fragment.mentions)
                self._remove(fragment)
        self.versions.pop(doc_id, None)
        return touched

    def replace_document(self, doc_id: str, fragments: Iterable[Fragment]) -> set[str]:
        """A document's fragments in place of its old ones; returns the keys no chunk mentions any more."""
        touched = self.remove_document(doc_id)
        for fragment in fragments:
            self.add(fragment)
        return {key for key in touched if key not in self.g}

    # ------------------------------------------------------------ reads

    def __contains__(self, key: str) -> bool:
        return key in self.g

    @property
    def chunk_count(self) -> int:
        return len(self.fragments)

    def counts(self) -> dict[str, int]:
        return {"entities": self.g.number_of_nodes(), "relations": self.g.number_of_edges(),
                "chunks": len(self.fragments), "documents": len(self.docs)}  # fmt: skip

    def specificity(self, key: str) -> float:
        """In (0, 1]: 1 for an entity of one chunk, 1/n for one of n chunks (HippoRAG's node specificity),
        so that "town" or "model", in every other chunk, neither ranks chunks nor spreads."""
        return 1.0 / max(len(self.g.nodes[key]["chunks"]), 1) ** SPECIFICITY

    def name(self, key: str) -> str:
        names: Counter[str] = self.g.nodes[key]["names"]
        return names.most_common(1)[0][0] if names else key

    def type(self, key: str) -> str:
        types: Counter[str] = self.g.nodes[key]["types"]
        return types.most_common(1)[0][0] if types else "OTHER"

    def description(self, key: str) -> str:
        descriptions = self.g.nodes[key]["descriptions"]
        return max(descriptions.values(), key=len) if descriptions else ""

    def info(self, key: str, score: float | None = None) -> EntityInfo:
        chunks = self.g.nodes[key]["chunks"]
        return EntityInfo(id=entity_id(key), name=self.name(key), type=self.type(key),
                          description=self.description(key), degree=self.g.degree(key), chunks=len(chunks),
                          documents=len({doc for doc, _ in chunks}), score=score)  # fmt: skip

    def key_of(self, entity: str) -> str | None:
        return self.by_id.get(entity)

    def name_matches(self, text: str) -> dict[str, float]:
        """Entities whose key is a run of the text's words (1.0 each)."""
        words = key_words(text)
        found: dict[str, float] = {}
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + MAX_NAME_WORDS) + 1):
                key = " ".join(words[i:j])
                if key in self.g:
                    found[key] = 1.0
        # keys the word runs miss: those whose edge stopwords were dropped ("the Orchestra" → "orchestra")
        whole = entity_key(text)
        if whole in self.g:
            found[whole] = 1.0
        return found

    def top_entities(self, limit: int) -> list[EntityInfo]:
        """The most connected entities (then the most mentioned)."""
        keys = heapq.nlargest(limit, self.g.nodes, key=lambda k: (self.g.degree(k), len(self.g.nodes[k]["chunks"])))
        return [self.info(k) for k in keys]

    def detail(self, key: str, chunk_limit: int = 100, neighbour_limit: int = 50) -> EntityDetail:
        node = self.g.nodes[key]
        edges = sorted(self.g.edges(key, data=True), key=lambda e: -e[2]["weight"])[:neighbour_limit]
        chunks = sorted(node["chunks"])[:chunk_limit]
        return EntityDetail(
            **self.info(key).model_dump(),
            descriptions=list(dict.fromkeys(d for d in node["descriptions"].values() if d))[:10],
            neighbours=[self.info(other) for _, other, _ in edges],
            relations=[self._relation(key, other, data) for _, other, data in edges],
            linked_chunks=[LinkedChunk(id=self.fragments[c].chunk_id, doc_id=c[0], chunk_index=c[1]) for c in chunks],
        )

    def _relation(self, a: str, b: str, data: dict[str, Any]) -> Relation:
        return Relation(source=entity_id(a), target=entity_id(b), source_name=self.name(a), target_name=self.name(b),
                        description=_edge_description(data), weight=data["weight"],
                        doc_ids=sorted({doc for doc, _ in data["links"]}))  # fmt: skip

    # ------------------------------------------------------------ retrieval

    def _neighbours(self, key: str) -> list[tuple[str, float, str]]:
        """(entity, strength in (0, 1), step description): relations first, then co-mentions in a chunk."""
        best: dict[str, tuple[float, str]] = {}
        for _, other, data in self.g.edges(key, data=True):
            w = data["weight"]
            best[other] = (max(w / (w + 1), COMENTION), _edge_description(data))
        chunks = self.g.nodes[key]["chunks"]
        if len(chunks) <= HUB_CHUNKS:
            together = {m.key for chunk in chunks for m in self.fragments[chunk].mentions}
            for other in together:
                if other != key and other not in best:
                    best[other] = (COMENTION, "mentioned together")
        ranked = sorted(best.items(), key=lambda kv: -(kv[1][0] * self.specificity(kv[0])))[:FANOUT]
        return [(other, strength, description) for other, (strength, description) in ranked]

    def walk(self, seeds: dict[str, float], *, hops: int = 2, limit: int = 20) -> list[ChunkHit]:
        """The `limit` best chunks for seed entities {key: score in (0, 1]}, with what brought each in."""
        reached: dict[str, Reached] = {k: Reached(s, 0) for k, s in seeds.items() if k in self.g and s > 0}
        frontier = list(reached)
        for hop in range(1, hops + 1):
            frontier = sorted(frontier, key=lambda k: -reached[k].score)[:FRONTIER]
            grown: list[str] = []
            for key in frontier:
                if len(self.g.nodes[key]["chunks"]) > HUB_CHUNKS:
                    continue
                base = reached[key].score * self.specificity(key)
                for other, strength, description in self._neighbours(key):
                    score = base * strength
                    if other not in reached or score > reached[other].score:  # the strongest path wins
                        if other not in reached:
                            grown.append(other)
                        reached[other] = Reached(score, hop, key, description)
            frontier = grown
        scores: dict[ChunkKey, float] = {}
        because: dict[ChunkKey, list[tuple[float, str]]] = {}
        for key, r in reached.items():
            chunks = self.g.nodes[key]["chunks"]
            if len(chunks) > HUB_CHUNKS:
                continue
            gain = r.score * self.specificity(key)
            for chunk in chunks:
                scores[chunk] = scores.get(chunk, 0.0) + gain
                because.setdefault(chunk, []).append((gain, key))
        best = heapq.nlargest(limit, scores, key=lambda c: (scores[c], c[0], -c[1]))
        return [self._hit(chunk, scores[chunk], because[chunk], reached) for chunk in best]

    def _hit(self, chunk: ChunkKey, score: float, because: list[tuple[float, str]],
             reached: dict[str, Reached]) -> ChunkHit:
        top = sorted(because, key=lambda gk: -gk[0])[:6]
        entities = [EntityRef(id=entity_id(k), name=self.name(k), type=self.type(k), hop=reached[k].hop,
                              score=round(g, 6)) for g, k in top]  # fmt: skip
        relations: list[RelationRef] = []
        seen: set[tuple[str, str]] = set()
        for _, key in top:  # the path back to the seed of each entity
            while (r := reached[key]).via is not None and (r.via, key) not in seen:
                seen.add((r.via, key))
                relations.append(RelationRef(source=entity_id(r.via), target=entity_id(key),
                                             source_name=self.name(r.via), target_name=self.name(key),
                                             description=r.relation))  # fmt: skip
                key = r.via
        fragment = self.fragments[chunk]
        return ChunkHit(chunk[0], chunk[1], fragment.chunk_id, score, GraphEvidence(entities=entities,
                                                                                     relations=relations))

    # ------------------------------------------------------------ export

    def export_graph(self) -> nx.Graph:
        """The graph with plain attributes (what GraphML can hold): ids, names, types, counts, descriptions."""
        out = nx.Graph()
        for key in sorted(self.g.nodes):  # sorted: the same graph exports the same, whatever the order of writes
            node = self.g.nodes[key]
            out.add_node(entity_id(key), key=key, name=self.name(key), type=self.type(key),
                         description=self.description(key), chunks=len(node["chunks"]),
                         documents=len({d for d, _ in node["chunks"]}))  # fmt: skip
        for a, b, data in sorted(self.g.edges(data=True), key=lambda e: sorted((e[0], e[1]))):
            out.add_edge(entity_id(a), entity_id(b), weight=float(data["weight"]), description=_edge_description(data),
                         documents=" ".join(sorted({d for d, _ in data["links"]})))  # fmt: skip
        return out

    def graphml(self) -> bytes:
        buffer = io.BytesIO()
        nx.write_graphml(self.export_graph(), buffer, encoding="utf-8")
        return buffer.getvalue()

    def node_link_json(self) -> str:
        return json.dumps(nx.node_link_data(self.export_graph(), edges="edges"), ensure_ascii=False)


def _edge_description(data: dict[str, Any]) -> str:
    """The description of the strongest mention of a relation."""
    links = data["links"].values()
    described = [(w, d) for d, w in links if d]
    return max(described)[1] if described else ""
