"""The graph layer on a real store (embedded Qdrant in a temporary folder, and a Qdrant server when QDRANT_URL is
set) with a hash embedder: the companion collection, replicas sharing a server, and what a crash between a
document's write and its graph's write leaves."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from inferag_protocol.rag import Chunk
from services.rag.graph import service as graph_service
from services.rag.graph.service import GraphService
from services.rag.graph.storage import companion
from services.rag.store import DocumentWrite, VectorStore, open_store

pytestmark = pytest.mark.asyncio(loop_scope="session")

DIM = 8
KB = "kb" + uuid.uuid4().hex[:8]  # a server outlives the tests: a name of their own
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


@pytest_asyncio.fixture(loop_scope="session",
                        params=["embedded", pytest.param("server", marks=pytest.mark.qdrant_server)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[VectorStore]:
    url = os.environ.get("QDRANT_URL")
    if request.param == "server" and not url:
        pytest.skip("QDRANT_URL is not set")
    s = open_store(url=url, api_key=os.environ.get("QDRANT_API_KEY")) if request.param == "server" else \
        open_store(url=None, path=":memory:")
    await s.create_collection(KB, dimension=DIM, embed_model="hash", sparse_model=None,
                              metadata={"graph": "keyphrase"})
    yield s
    if KB in {c.name for c in await s.list_collections()}:
        await s.delete_collection(KB)
    await s.close()



def _chunks(texts: list[str]) -> list[Chunk]:
    return [Chunk(text=t, start=0, end=len(t), tokens=len(t.split())) for t in texts]


async def _store_document(store: VectorStore, graph: GraphService | None, doc_id: str, texts: list[str]) -> None:
    """What Ingestor.store_documents does for one document (with graph None: a crash before its graph's write)."""
    extracted = await graph.extract(KB, texts) if graph else None
    info = await store.replace_document(KB, doc_id=doc_id, source=None, metadata={}, chunks=_chunks(texts),
                                        dense=await HashEmbedder().embed(texts))
    if graph is not None and extracted is not None:
        await graph.documents_stored(KB, [(info, len(texts))], extracted)


def _has_companion(store: VectorStore) -> bool:
    return companion(KB) in store.backend.list_collections()


def _service(store: VectorStore) -> GraphService:
    return GraphService.build(store, HashEmbedder())


async def test_entities_and_fragments_live_in_a_hidden_companion(store: VectorStore) -> None:
    graph = _service(store)
    await _store_document(store, graph, "a", TEXTS["a"])
    await _store_document(store, graph, "b", TEXTS["b"])
    assert KB in {c.name for c in await store.list_collections()}
    assert not any(c.name.startswith("_") for c in await store.list_collections())  # the companion is hidden
    assert _has_companion(store)
    stats = await graph.stats(KB)
    assert stats.entity_points == stats.entities and stats.chunks == 2
    assert await graph.storage.still_mentioned(KB, "tessaly chamber orchestra")
    await store.delete_collection(KB)
    assert not _has_companion(store)


async def test_a_crash_between_the_document_and_its_graph_is_mended_on_load(store: VectorStore) -> None:
    writer = _service(store)
    await _store_document(store, writer, "a", TEXTS["a"])
    await _store_document(store, None, "b", TEXTS["b"])  # stored, its graph never written (a crash)
    await store.delete_document(KB, "a")  # deleted, its graph left behind (a crash)
    reader = _service(store)
    stats = await reader.stats(KB)  # the first use loads the graph and checks it against the registry
    assert (stats.documents, stats.chunks) == (1, 1)
    names = {e.name for e in (await reader.entities(KB, None, 50)).data}
    assert "Medrin" in names and "Oriane Valcourt" not in names
    assert stats.entity_points == stats.entities  # her entity point went too
    assert (await reader.rebuild(KB)).model_dump() == stats.model_dump()


async def test_replicas_on_one_server_see_each_others_writes(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.embedded:  # as if two processes shared a Qdrant server
        monkeypatch.setattr(VectorStore, "embedded", property(lambda self: False))
    monkeypatch.setattr(graph_service, "REFRESH_S", 0.0)
    one, two = _service(store), _service(store)
    await _store_document(store, one, "a", TEXTS["a"])
    assert (await two.stats(KB)).documents == 1
    await _store_document(store, one, "b", TEXTS["b"])
    assert (await two.stats(KB)).documents == 2  # `two` loaded again: the marker moved
    hits = await two.search([KB], "Where does Oriane Valcourt's orchestra rehearse?", None, top_k=2)
    assert {h.doc_id for h in hits} == {"a", "b"}
    await _store_document(store, two, "a", ["Greta Lindholm measures carbon."])  # replaces a, in the other replica
    # `one` still holds the orchestra's entity from b; "Oriane Valcourt" is gone everywhere
    assert "Oriane Valcourt" not in {e.name for e in (await one.entities(KB, None, 50)).data}
    assert (await one.stats(KB)).entity_points == (await one.stats(KB)).entities


async def test_a_batch_of_documents_writes_its_graph_once(store: VectorStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _service(store)
    writes: list[int] = []
    upsert = store.upsert_points

    async def counted(name: str, points: Sequence[object]) -> None:
        writes.append(len(points))
        await upsert(name, points)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "upsert_points", counted)
    texts = [t for doc in TEXTS.values() for t in doc]
    extracted = await graph.extract(KB, texts)
    assert extracted is not None and writes == []
    infos = await store.write_documents(KB, [
        DocumentWrite(doc_id, None, {}, _chunks(doc), await HashEmbedder().embed(doc)) for doc_id, doc in TEXTS.items()
    ])  # fmt: skip
    await graph.documents_stored(KB, [(info, len(TEXTS[info.doc_id])) for info in infos], extracted)
    entities = (await graph.graph(KB)).counts()["entities"]
    assert writes == [entities + 2]  # written before it returns, in one write: the entities and both fragments
    stats = await graph.stats(KB)
    assert stats.documents == 2 and stats.entity_points == stats.entities
    assert {e.name for e in (await graph.entities(KB, "Medrin", 5)).data} >= {"Medrin"}
