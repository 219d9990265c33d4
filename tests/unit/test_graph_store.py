"""The graph layer on a real store (embedded Qdrant in memory) with a hash embedder: the companion collection,
replicas sharing a server, and what a crash between a document's write and its graph's write leaves."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from services.rag.graph import service as graph_service
from services.rag.graph.service import GraphService
from services.rag.graph.storage import KIND
from services.rag.store import VectorStore, open_store
from services.rag.types import Chunk

pytestmark = pytest.mark.asyncio(loop_scope="session")

DIM = 8
TEXTS = {
    "a": ["Oriane Valcourt is first violin of the Tessaly Chamber Orchestra."],
    "b": ["The Tessaly Chamber Orchestra rehearses in the Corvane Hall in Medrin."],
}


class HashEmbedder:
    """Deterministic unit vectors from a hash (a unit-test double: no model)."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            vector = [b - 127.5 for b in digest[:DIM]]
            norm = sum(v * v for v in vector) ** 0.5
            out.append([v / norm for v in vector])
        return out


@pytest_asyncio.fixture(loop_scope="session")
async def store() -> AsyncIterator[VectorStore]:
    s = open_store(url=None, path=":memory:")
    await s.create_collection("kb", dimension=DIM, embed_model="hash", sparse_model=None,
                              metadata={"graph": "keyphrase"})
    yield s
    await s.close()


async def _store_document(store: VectorStore, graph: GraphService | None, doc_id: str, texts: list[str]) -> None:
    chunks = [Chunk(text=t, start=0, end=len(t), tokens=len(t.split())) for t in texts]
    vectors = await HashEmbedder().embed(texts)
    extracted = await graph.extract("kb", texts) if graph else None
    info = await store.replace_document("kb", doc_id=doc_id, source=None, metadata={}, chunks=chunks, dense=vectors)
    if graph is not None:
        await graph.document_stored("kb", info, extracted)
        await graph.flush("kb")  # as an ingestion request does before it answers


def _service(store: VectorStore) -> GraphService:
    return GraphService.build(store, HashEmbedder())


async def test_entities_and_fragments_live_in_a_hidden_companion(store: VectorStore) -> None:
    graph = _service(store)
    await _store_document(store, graph, "a", TEXTS["a"])
    await _store_document(store, graph, "b", TEXTS["b"])
    assert [c.name for c in await store.list_collections()] == ["kb"]  # the companion is not listed
    assert await store.companion_exists("kb", KIND)
    stats = await graph.stats("kb")
    assert stats.entity_points == stats.entities and stats.chunks == 2
    assert await graph.storage.still_mentioned("kb", "tessaly chamber orchestra")
    await store.delete_collection("kb")
    assert not await store.companion_exists("kb", KIND)


async def test_a_crash_between_the_document_and_its_graph_is_mended_on_load(store: VectorStore) -> None:
    writer = _service(store)
    await _store_document(store, writer, "a", TEXTS["a"])
    await _store_document(store, None, "b", TEXTS["b"])  # stored, its graph never written (a crash)
    await store.delete_document("kb", "a")  # deleted, its graph left behind (a crash)
    reader = _service(store)
    stats = await reader.stats("kb")  # the first use loads the graph and checks it against the registry
    assert (stats.documents, stats.chunks) == (1, 1)
    names = {e.name for e in (await reader.entities("kb", None, 50)).data}
    assert "Medrin" in names and "Oriane Valcourt" not in names
    assert stats.entity_points == stats.entities  # her entity point went too
    assert (await reader.rebuild("kb")).model_dump() == stats.model_dump()


async def test_replicas_on_one_server_see_each_others_writes(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "mode", "server")  # as if two processes shared a Qdrant server
    monkeypatch.setattr(graph_service, "REFRESH_S", 0.0)
    one, two = _service(store), _service(store)
    await _store_document(store, one, "a", TEXTS["a"])
    assert (await two.stats("kb")).documents == 1
    await _store_document(store, one, "b", TEXTS["b"])
    assert (await two.stats("kb")).documents == 2  # `two` loaded again: the marker moved
    hits = await two.search(["kb"], "Where does Oriane Valcourt's orchestra rehearse?", None, top_k=2)
    assert {h.doc_id for h in hits} == {"a", "b"}
    await _store_document(store, two, "a", ["Greta Lindholm measures carbon."])  # replaces a, in the other replica
    # `one` still holds the orchestra's entity from b; "Oriane Valcourt" is gone everywhere
    assert "Oriane Valcourt" not in {e.name for e in (await one.entities("kb", None, 50)).data}
    assert (await one.stats("kb")).entity_points == (await one.stats("kb")).entities


async def test_graph_writes_wait_and_go_together(store: VectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _service(store)
    writes: list[int] = []
    upsert = store.upsert_companion

    async def counted(collection: str, kind: str, points: Sequence[object]) -> None:
        writes.append(len(points))
        await upsert(collection, kind, points)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "upsert_companion", counted)
    monkeypatch.setattr(graph_service, "FLUSH_DELAY_S", 0.05)
    for doc_id, texts in TEXTS.items():
        extracted = await graph.extract("kb", texts)
        chunks = [Chunk(text=t, start=0, end=len(t), tokens=1) for t in texts]
        info = await store.replace_document("kb", doc_id=doc_id, source=None, metadata={}, chunks=chunks,
                                            dense=await HashEmbedder().embed(texts))  # fmt: skip
        await graph.document_stored("kb", info, extracted)
    assert writes == [] and (await graph.graph("kb")).counts()["documents"] == 2  # the process sees them already
    await asyncio.sleep(0.3)  # the flusher's delay passes
    assert len(writes) == 1 and writes[0] == (await graph.stats("kb")).entities + 2  # entities and two fragments
    assert await store.count_companion("kb", KIND, must={"kind": "chunk"}) == 2
