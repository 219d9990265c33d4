"""The vector store, as one congruence suite over its two backends: embedded (qdrant-edge, in a
folder or a temporary one) and a Qdrant server (when QDRANT_URL is set).

Vectors are real but small: dense ones hash words into 16 dimensions (so texts sharing words
are close), sparse ones come from the BM25 encoder.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from qdrant_client import models

from inferag_protocol.rag import Chunk, DocumentInfo
from services.common.errors import Conflict, InvalidRequest, NotFound, UpstreamUnavailable
from services.rag.bm25 import BM25Encoder, tokenize
from services.rag.store import (
    LIVE,
    StoreLocked,
    VectorStore,
    chunk_point_id,
    document_point_id,
    open_store,
    registry_name,
)
from services.rag.store import documents as protocol

DIM = 16
MODEL = "hash-16"
BM25 = BM25Encoder()
REPO = Path(__file__).resolve().parents[2]
MODES = ["memory", "folder", pytest.param("server", marks=pytest.mark.qdrant_server)]


def embed(text: str) -> list[float]:
    """Words hashed into DIM signed buckets, unit length: a deterministic bag-of-words embedding."""
    vector = [0.0] * DIM
    for token in tokenize(text) or ["<empty>"]:
        digest = hashlib.blake2b(token.encode(), digest_size=2).digest()
        vector[digest[0] % DIM] += 1.0 if digest[1] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def chunks_of(texts: list[str]) -> list[Chunk]:
    chunks, offset = [], 0
    for text in texts:
        chunks.append(Chunk(text=text, start=offset, end=offset + len(text), tokens=len(text.split())))
        offset += len(text) + 1
    return chunks


async def ingest(store: VectorStore, collection: str, doc_id: str, texts: list[str], *,
                 metadata: dict[str, Any] | None = None, source: str | None = None,
                 dense: list[list[float]] | None = None) -> DocumentInfo:
    return await store.replace_document(
        collection, doc_id=doc_id, source=source, metadata=metadata, chunks=chunks_of(texts),
        dense=dense if dense is not None else [embed(t) for t in texts], sparse=BM25.encode_documents(texts),
    )


async def raw_points(store: VectorStore, collection: str) -> dict[str, dict[str, Any]]:
    """Every point of a collection, staged ones included: id -> payload."""
    await store._ready()
    records = await store._run(protocol.scroll_all, store.backend, collection, None)
    return {r.id: r.payload for r in records}


async def search_docs(store: VectorStore, collection: str, **kwargs: Any) -> set[str]:
    hits = await store.search([collection], dense=embed("anything"), sparse=None, mode="dense", top_k=50, **kwargs)
    return {hit.doc_id for hit in hits}


Opener = Callable[[], VectorStore]


@pytest_asyncio.fixture(loop_scope="session", params=MODES)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store of the mode under test; every store it opened is closed afterwards."""
    mode = request.param
    url = os.environ.get("QDRANT_URL")
    if mode == "server" and not url:
        pytest.skip("QDRANT_URL is not set")
    opened: list[VectorStore] = []

    def open_(**options: Any) -> VectorStore:
        if mode == "server":
            store = open_store(url=url, api_key=os.environ.get("QDRANT_API_KEY"), path=None, **options)
        else:
            store = open_store(url=None, api_key=None, path=":memory:" if mode == "memory" else tmp_path / "store",
                               **options)
        opened.append(store)
        return store

    open_.mode = mode  # type: ignore[attr-defined]
    yield open_
    if mode == "server":  # the server outlives the test: remove what it made
        store = open_store(url=url, api_key=os.environ.get("QDRANT_API_KEY"), path=None)
        for info in await store.list_collections():
            if info.name.startswith(PREFIX):
                await store.delete_collection(info.name)
        opened.append(store)
    for store in opened:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def store(opener: Opener) -> VectorStore:
    return opener()


PREFIX = "t" + uuid.uuid4().hex[:6]


@pytest.fixture
def name() -> str:
    """A collection name unique to the test (the server is shared)."""
    return f"{PREFIX}-{uuid.uuid4().hex[:8]}"


async def new_collection(store: VectorStore, name: str, **kwargs: Any) -> str:
    await store.create_collection(name, dimension=DIM, embed_model=MODEL, **kwargs)
    return name


# -- collections ------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_collections_create_idempotently_conflict_list_and_delete(store: VectorStore, name: str) -> None:
    info = await store.create_collection(name, dimension=DIM, embed_model=MODEL, metadata={"team": "ops"})
    assert (info.name, info.dimension, info.embed_model, info.sparse_model, info.points, info.documents) == (
        name, DIM, MODEL, "bm25", 0, 0)
    assert await store.create_collection(name, dimension=DIM, embed_model=MODEL) == info
    with pytest.raises(Conflict):
        await store.create_collection(name, dimension=DIM + 1, embed_model=MODEL)
    with pytest.raises(Conflict):
        await store.create_collection(name, dimension=DIM, embed_model="other-model")
    with pytest.raises(Conflict):
        await store.create_collection(name, dimension=DIM, embed_model=MODEL, sparse_model=None)

    await ingest(store, name, "a", ["one chunk", "two chunks"])
    await ingest(store, name, "b", ["three chunks"])
    listed = {i.name: i for i in await store.list_collections()}
    assert registry_name(name) not in listed
    assert (listed[name].points, listed[name].documents) == (3, 2)
    assert (await store.get_collection(name)).points == 3
    assert await store.count(name) == 3

    await store.delete_collection(name)
    assert name not in {i.name for i in await store.list_collections()}
    assert not await store._run(store.backend.exists, registry_name(name))
    for call in (store.get_collection(name), store.delete_collection(name), store.count(name),
                 store.get_document(name, "a"), store.list_documents(name)):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(NotFound):
        await ingest(store, name, "a", ["x"])
    with pytest.raises(NotFound):
        await store.search([name], dense=embed("x"), sparse=None, mode="dense")


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("bad", ["", "_docs__x", "-x", "a b", "a/b", "a.b", "é", "x" * 64])
async def test_collection_names_are_validated(bad: str) -> None:
    store = open_store(url=None, api_key=None, path=":memory:")
    try:
        with pytest.raises(InvalidRequest) as raised:
            await store.create_collection(bad, dimension=DIM, embed_model=MODEL)
        assert raised.value.param == "collection"
        with pytest.raises(InvalidRequest):
            await store.get_collection(bad)
        assert (await store.create_collection("x" * 63, dimension=DIM, embed_model=MODEL)).name == "x" * 63
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_sparse_vector_uses_the_idf_modifier_and_models_are_persisted(opener: Opener, name: str) -> None:
    store = opener()
    await store.create_collection(name, dimension=DIM, embed_model=MODEL)
    await store.create_collection(f"{name}-s", dimension=DIM, embed_model=MODEL, sparse_model="splade-x")
    spec = await store._run(store.backend.spec, name)
    assert spec is not None and spec.sparse == {"sparse": True} and spec.dense == {"dense": DIM}
    splade = await store._run(store.backend.spec, f"{name}-s")
    assert splade is not None and splade.sparse == {"sparse": False}
    if opener.mode != "server":  # type: ignore[attr-defined]
        # the engine's own configuration of the shard says the same
        config = json.loads((Path(store.backend.root) / name / "edge_config.json").read_text())  # type: ignore[attr-defined]
        assert "idf" in json.dumps(config["sparse_vectors"]).lower()
        assert "idf" not in json.dumps(json.loads((Path(store.backend.root) / f"{name}-s"  # type: ignore[attr-defined]
                                                   / "edge_config.json").read_text())["sparse_vectors"]).lower()
    if opener.mode == "folder":  # type: ignore[attr-defined]
        await store.close()
        store = opener()
    info = await store.get_collection(f"{name}-s")
    assert (info.dimension, info.embed_model, info.sparse_model) == (DIM, MODEL, "splade-x")


# -- documents --------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_reingesting_a_changed_document_leaves_exactly_the_new_chunks(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    first = await ingest(store, name, "manual", ["alpha pump start", "beta valve", "gamma filter"], source="m.txt")
    second = await ingest(store, name, "manual", ["alpha pump stop", "delta gauge"], source="m.txt",
                          metadata={"rev": 2})
    assert first.version != second.version
    info, chunks = await store.get_document(name, "manual")
    assert info == second
    assert (info.chunks, info.source, info.metadata) == (2, "m.txt", {"rev": 2})
    assert [c.text for c in chunks] == ["alpha pump stop", "delta gauge"]
    expected_ids = [chunk_point_id("manual", second.version, i) for i in range(2)]
    assert [c.id for c in chunks] == expected_ids
    assert [(c.start, c.end, c.chunk_index) for c in chunks] == [(0, 15, 0), (16, 27, 1)]
    points = await raw_points(store, name)
    assert sorted(points) == sorted(expected_ids)
    assert {p["state"] for p in points.values()} == {LIVE}
    assert await store.count(name) == 2
    gone = await store.search([name], dense=None, sparse=BM25.encode_query("gamma"), mode="sparse")
    assert gone == []


@pytest.mark.asyncio(loop_scope="session")
async def test_delete_document_removes_all_of_it(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    await ingest(store, name, "keep", ["kept text"])
    await ingest(store, name, "drop", ["dropped one", "dropped two", "dropped three"])
    await store.delete_document(name, "drop")
    with pytest.raises(NotFound):
        await store.get_document(name, "drop")
    with pytest.raises(NotFound):
        await store.delete_document(name, "drop")
    assert {p["doc_id"] for p in (await raw_points(store, name)).values()} == {"keep"}
    docs, total = await store.list_documents(name)
    assert ([d.doc_id for d in docs], total) == (["keep"], 1)
    assert await store.count(name) == 1
    assert await search_docs(store, name) == {"keep"}


@pytest.mark.asyncio(loop_scope="session")
async def test_list_documents_pages_in_the_order_documents_were_first_stored(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    for doc_id in ["c", "a", "e", "b", "d"]:
        await ingest(store, name, doc_id, [f"text of {doc_id}"], metadata={"n": doc_id})
    await ingest(store, name, "a", ["a again", "and longer"], metadata={"n": "a2"})  # a new version keeps its place
    docs, total = await store.list_documents(name, limit=2, offset=1)
    assert total == 5
    assert [(d.doc_id, d.metadata, d.chunks) for d in docs] == [("a", {"n": "a2"}, 2), ("e", {"n": "e"}, 1)]
    assert [d.doc_id for d in (await store.list_documents(name))[0]] == ["c", "a", "e", "b", "d"]
    assert (await store.list_documents(name, offset=9)) == ([], 5)


@pytest.mark.asyncio(loop_scope="session")
async def test_replace_document_checks_its_inputs(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    good = dict(doc_id="d", source=None, metadata=None, chunks=chunks_of(["x y"]))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"dense": [[0.1] * (DIM - 1)], "sparse": BM25.encode_documents(["x y"])}, "dense"),
        ({"dense": [], "sparse": BM25.encode_documents(["x y"])}, "dense"),
        ({"dense": [embed("x y")], "sparse": None}, "sparse"),
        ({"dense": [embed("x y")], "sparse": BM25.encode_documents(["x y"]), "doc_id": ""}, "doc_id"),
    ]
    for extra, param in cases:
        with pytest.raises(InvalidRequest) as raised:
            await store.replace_document(name, **{**good, **extra})
        assert raised.value.param == param
    assert await store.count(name) == 0


# -- crashes and concurrency --------------------------------------------------------------------------


def staged_version(collection: str, doc_id: str, texts: list[str], **kwargs: Any) -> protocol.Staged:
    """A new version of a document as the write protocol builds it, not written yet."""
    return protocol.build(collection, dimension=DIM, embed_model=MODEL, sparse_model="bm25", doc_id=doc_id,
                          source=kwargs.pop("source", None), metadata=kwargs.pop("metadata", None),
                          chunks=chunks_of(texts), dense=[embed(t) for t in texts],
                          sparse=BM25.encode_documents(texts), **kwargs)


async def crash(opener: Opener, store: VectorStore, recovered: dict[str, int]) -> VectorStore:
    """The process dies here: reopen the folder (recovery runs first) or, in memory, recover."""
    if opener.mode == "folder":  # type: ignore[attr-defined]
        await store.close()
        return opener()
    # recovery leaves alone versions made in the millisecond it starts or later (a writer's under way)
    await asyncio.sleep(0.002)
    assert await store.recover() == recovered
    return store


async def _crash_scenario(opener: Opener, name: str, *, committed: bool) -> None:
    store = opener()
    await new_collection(store, name)
    old = await ingest(store, name, "doc", ["old one", "old two", "old three"])
    await ingest(store, name, "other", ["bystander"])
    new_texts = ["new one", "new two"]
    staged = staged_version(name, "doc", new_texts, metadata={"v": 2})
    new = staged.info
    await store._run(protocol.stage, store.backend, name, [staged])  # step (1)
    if committed:
        await store._run(protocol.commit, store.backend, name, [staged])  # step (2), then the crash: no step (3)
    store = await crash(opener, store, {"published": 2, "deleted": 3} if committed else {"published": 0, "deleted": 2})
    winner, texts = (new, new_texts) if committed else (old, ["old one", "old two", "old three"])
    info, chunks = await store.get_document(name, "doc")
    assert info.version == winner.version
    assert [c.text for c in chunks] == texts
    expected = {chunk_point_id("doc", winner.version, i) for i in range(len(texts))}
    points_now = await raw_points(store, name)
    assert {i for i, p in points_now.items() if p["doc_id"] == "doc"} == expected
    assert {p["state"] for p in points_now.values()} == {LIVE}
    assert await store.count(name) == len(texts) + 1
    hits = await store.search([name], dense=embed("new one"), sparse=BM25.encode_query("one"), mode="hybrid")
    assert {h.text for h in hits} == {*texts, "bystander"}


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
async def test_a_crash_after_staging_leaves_the_old_document_whole(opener: Opener, name: str) -> None:
    await _crash_scenario(opener, name, committed=False)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
async def test_a_crash_after_the_registry_commit_leaves_the_new_document_whole(opener: Opener, name: str) -> None:
    await _crash_scenario(opener, name, committed=True)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
@pytest.mark.parametrize("registry_deleted", [False, True])
async def test_a_crash_inside_delete_document_leaves_it_whole_or_gone(opener: Opener, name: str,
                                                                      registry_deleted: bool) -> None:
    store = opener()
    await new_collection(store, name)
    doc = await ingest(store, name, "doc", ["first part", "second part"])
    await ingest(store, name, "other", ["bystander"])
    await store._run(store.backend.set_payload, name, {"state": "staged"},
                     models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value="doc"))]))
    if registry_deleted:
        await store._run(store.backend.delete, registry_name(name), [document_point_id("doc")])
    store = await crash(opener, store, {"published": 0, "deleted": 2} if registry_deleted else
                        {"published": 2, "deleted": 0})
    points = await raw_points(store, name)
    assert {p["state"] for p in points.values()} == {LIVE}
    if registry_deleted:
        with pytest.raises(NotFound):
            await store.get_document(name, "doc")
        assert {p["doc_id"] for p in points.values()} == {"other"}
    else:
        info, chunks = await store.get_document(name, "doc")
        assert info == doc and [c.text for c in chunks] == ["first part", "second part"]
    assert await store.count(name) == (1 if registry_deleted else 3)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["folder"], indirect=True)
async def test_concurrent_ingesters_lose_and_duplicate_nothing(opener: Opener, name: str) -> None:
    store = opener()
    await new_collection(store, name)
    doc_of_task = ["d0", "d1", "d2", "d0", "d3", "d1", "d0", "d4"]  # same and different documents
    versions: dict[str, dict[str, list[str]]] = {}  # doc_id -> version -> texts

    async def ingester(task: int) -> None:
        doc_id = doc_of_task[task]
        for round_ in range(3):
            texts = [f"task{task} round{round_} part{i} of {doc_id}" for i in range(2 + (task + round_) % 4)]
            info = await ingest(store, name, doc_id, texts, metadata={"task": task})
            versions.setdefault(doc_id, {})[info.version] = texts
            await asyncio.sleep(0)

    await asyncio.gather(*(ingester(t) for t in range(8)))
    await store.close()
    store = opener()

    docs, total = await store.list_documents(name)
    assert total == 5 and sorted(d.doc_id for d in docs) == ["d0", "d1", "d2", "d3", "d4"]
    expected_ids = set()
    for doc in docs:
        info, chunks = await store.get_document(name, doc.doc_id)
        texts = versions[doc.doc_id][info.version]  # one whole version that an ingester wrote
        assert [c.text for c in chunks] == texts and info.chunks == len(texts)
        ids = [chunk_point_id(doc.doc_id, info.version, i) for i in range(len(texts))]
        assert [c.id for c in chunks] == ids
        expected_ids.update(ids)
    points = await raw_points(store, name)
    assert set(points) == expected_ids
    assert {p["state"] for p in points.values()} == {LIVE}
    assert await store.count(name) == len(expected_ids)
    assert await store.recover() == {"published": 0, "deleted": 0}


def test_a_folder_open_in_another_process_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom services.rag.store import open_store\n"
         "store = open_store(url=None, api_key=None, path=sys.argv[1])\nprint('open', flush=True)\nsys.stdin.read()\n"
         "store.close_sync()\n",
         str(folder)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLocked) as raised:
            open_store(url=None, api_key=None, path=folder)
        error = raised.value
        assert (error.status_code, error.code) == (503, "store_locked")
        assert str(folder) in error.message and "QDRANT_URL" in error.message
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    open_store(url=None, api_key=None, path=folder).close_sync()  # free again once the other process is gone


# -- search ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_filters_exclude_what_they_should(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    await ingest(store, name, "a", ["first text"], source="a.txt", metadata={"lang": "fr", "year": 2019, "w": 0.5})
    await ingest(store, name, "b", ["second text"], source="b.txt", metadata={"lang": "en", "year": 2021, "w": 1.5})
    await ingest(store, name, "c", ["third text"], source="c.txt", metadata={"lang": "de", "year": 2023, "ok": True})
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"a", "b", "c"}),
        ({"lang": "fr"}, {"a"}),
        ({"lang": {"any": ["fr", "de"]}}, {"a", "c"}),
        ({"year": {"gte": 2020, "lt": 2023}}, {"b"}),
        ({"year": {"gt": 2019}}, {"b", "c"}),
        ({"year": {"lte": 2021.5}}, {"a", "b"}),
        ({"year": 2023}, {"c"}),
        ({"year": {"any": [2019, 2023]}}, {"a", "c"}),
        ({"w": 1.5}, {"b"}),
        ({"ok": True}, {"c"}),
        ({"doc_id": "b"}, {"b"}),
        ({"doc_id": {"any": ["a", "c", "zz"]}}, {"a", "c"}),
        ({"source": "c.txt"}, {"c"}),
        ({"lang": {"any": ["fr", "en"]}, "year": {"lte": 2019}}, {"a"}),
        ({"lang": "it"}, set()),
    ]
    for spec, expected in cases:
        assert await search_docs(store, name, filter=spec) == expected, spec
    for bad in [{"lang": ["fr"]}, {"year": {"between": 1}}, {"year": {"gte": "x"}}, {"doc_id": {"gte": 1}},
                # integers past 64 bits were an OverflowError in the engine (a 500)
                {"year": {"gte": 10**30}}, {"year": 2**63}, {"year": {"any": [1, -(2**63) - 1]}},
                {"w": {"lt": 10**400}}, {"a.b": 1}, {"lang": None}, {"lang": {"any": []}}, {"lang": {"any": ["x", 1]}},
                {"year": {"any": [1], "gte": 0}}, {"doc_id": 3}, "lang"]:
        with pytest.raises(InvalidRequest) as raised:
            await search_docs(store, name, filter=bad)
        assert raised.value.param == "filter", bad


@pytest.mark.asyncio(loop_scope="session")
async def test_hybrid_finds_what_only_sparse_and_what_only_dense_matches(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    query_dense = embed("reset procedure of the cooling system")
    anti = [-x for x in query_dense]
    await ingest(store, name, "rare-token", ["The console shows code XQ7ZETA before shutdown"], dense=[anti])
    await ingest(store, name, "dense-twin", ["Gardens bloom with tulips in spring"], dense=[query_dense])
    for i in range(6):
        text = f"Maintenance note {i} about pumps, valves and the console"
        await ingest(store, name, f"filler-{i}", [text])
    sparse_query = BM25.encode_query("XQ7ZETA")

    dense_hits = await store.search([name], dense=query_dense, sparse=None, mode="dense", top_k=3)
    assert dense_hits[0].doc_id == "dense-twin" and dense_hits[0].score == pytest.approx(1.0)
    assert "rare-token" not in {h.doc_id for h in dense_hits}
    sparse_hits = await store.search([name], dense=None, sparse=sparse_query, mode="sparse", top_k=3)
    assert [h.doc_id for h in sparse_hits] == ["rare-token"]
    for fusion in ("rrf", "dbsf"):
        hybrid = await store.search([name], dense=query_dense, sparse=sparse_query, mode="hybrid",
                                    fusion=fusion, top_k=2)
        assert {h.doc_id for h in hybrid} == {"rare-token", "dense-twin"}, fusion
        assert hybrid[0].score >= hybrid[1].score and all(h.collection == name for h in hybrid)
        if fusion == "rrf":  # Qdrant's RRF, 1 / (k + rank) with the server's k = 2, on both backends: rare-token
            # is first of the sparse list and last (8th) of the dense one, dense-twin first of the dense one only
            assert {h.doc_id: round(h.score, 4) for h in hybrid} == {"rare-token": 0.6111, "dense-twin": 0.5}
    rare = next(h for h in hybrid if h.doc_id == "rare-token")
    assert rare.text.startswith("The console") and rare.chunk_index == 0

    with pytest.raises(InvalidRequest):
        await store.search([name], dense=None, sparse=sparse_query, mode="hybrid")
    with pytest.raises(InvalidRequest):
        await store.search([name], dense=query_dense[:4], sparse=None, mode="dense")
    assert await store.search([name], dense=None, sparse=BM25.encode_query("the of"), mode="sparse") == []
    above = await store.search([name], dense=query_dense, sparse=None, mode="dense", score_threshold=0.99)
    assert [h.doc_id for h in above] == ["dense-twin"]


@pytest.mark.asyncio(loop_scope="session")
async def test_search_over_two_collections_merges_by_score(store: VectorStore, name: str) -> None:
    one, two = await new_collection(store, f"{name}-1"), await new_collection(store, f"{name}-2")
    await ingest(store, one, "pumps", ["centrifugal pump maintenance schedule", "pump seal replacement"])
    await ingest(store, two, "valves", ["valve inspection checklist", "pump and valve alignment"])
    query = "pump seal replacement"
    hits = await store.search([one, two], dense=embed(query), sparse=BM25.encode_query(query), mode="dense", top_k=4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].text == query and hits[0].collection == one
    assert {h.collection for h in hits} == {one, two} and len(hits) == 4
    for mode in ("sparse", "hybrid"):
        merged = await store.search([one, two], dense=embed(query), sparse=BM25.encode_query(query),
                                    mode=mode, top_k=3)
        assert merged[0].text == query and len(merged) == 3
    assert len(await store.search([one, two], dense=embed(query), sparse=None, mode="dense", top_k=1)) == 1

    other_model = await store.create_collection(f"{name}-3", dimension=DIM, embed_model="another")
    with pytest.raises(InvalidRequest):
        await store.search([one, other_model.name], dense=embed(query), sparse=None, mode="dense")
    with pytest.raises(InvalidRequest):
        await store.search([], dense=embed(query), sparse=None, mode="dense")


@pytest.mark.asyncio(loop_scope="session")
async def test_chunk_metadata_is_kept_under_the_documents(store: VectorStore, name: str) -> None:
    await new_collection(store, name)
    chunk = Chunk(text="Intro text", start=0, end=10, tokens=2, metadata={"headings": ["Intro"], "lang": "xx"})
    await store.replace_document(name, doc_id="d", source="d.md", metadata={"lang": "fr"}, chunks=[chunk],
                                 dense=[embed(chunk.text)], sparse=BM25.encode_documents([chunk.text]))
    _, (stored,) = await store.get_document(name, "d")
    assert stored.metadata == {"headings": ["Intro"], "lang": "fr"}
    assert (stored.source, stored.tokens) == ("d.md", 2)


@pytest.mark.asyncio(loop_scope="session")
async def test_ping_and_close_are_idempotent(opener: Opener) -> None:
    store = opener()
    await store.ping()
    await store.close()
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.ping()


@pytest.mark.asyncio(loop_scope="session")
async def test_an_unreachable_server_is_upstream_unavailable(tmp_path: Path) -> None:
    store = open_store(url="http://127.0.0.1:1", api_key=None, path=tmp_path / "ignored")  # the url wins
    assert store.mode == "server" and not (tmp_path / "ignored").exists()
    try:
        for call in (store.ping(), store.list_collections(),
                     store.search(["c"], dense=embed("x"), sparse=None, mode="dense")):
            with pytest.raises(UpstreamUnavailable, match="127.0.0.1:1"):
                await call
    finally:
        await store.close()
    with pytest.raises(ValueError):
        open_store(url=None, api_key=None, path=None)


# -- several writers, recovery while running, paging ----------------------------------------------------------


def interleavings(a: list[str], b: list[str]) -> list[list[str]]:
    """Every order of the steps of two writers that keeps each writer's own order (20 for 3 + 3)."""
    orders = []
    for slots in itertools.combinations(range(len(a) + len(b)), len(a)):
        steps, ia, ib = [], iter(a), iter(b)
        for i in range(len(a) + len(b)):
            steps.append(next(ia) if i in slots else next(ib))
        orders.append(steps)
    return orders


async def assert_whole(store: VectorStore, collection: str, doc_id: str, versions: dict[str, list[str]]) -> str:
    """The document holds exactly one written version, all of it live, and nothing else; returns it."""
    info, chunks = await store.get_document(collection, doc_id)
    assert info.version in versions, "the registry names a version nobody wrote"
    texts = versions[info.version]
    assert [c.text for c in chunks] == texts, "the committed version is not whole"
    mine = {i: p for i, p in (await raw_points(store, collection)).items() if p["doc_id"] == doc_id}
    assert set(mine) == {chunk_point_id(doc_id, info.version, i) for i in range(len(texts))}, \
        "points of another version are left"
    assert {p["state"] for p in mine.values()} == {LIVE}
    hits = await store.search([collection], dense=embed(texts[0]), sparse=None, mode="dense", top_k=50,
                              filter={"doc_id": doc_id})
    assert sorted(h.text for h in hits) == sorted(texts)
    return info.version


@pytest.mark.asyncio(loop_scope="session")
async def test_two_store_instances_replacing_one_document_in_every_interleaving_keep_it_whole(
        opener: Opener, name: str) -> None:
    """Two writers (two `VectorStore`s over one engine: another replica on a server, another process's store
    in its place embedded) replace the same document; each writer's three steps (stage, commit, publish) are
    interleaved in every possible order. The earlier protocol lost the document to "A commits, B commits,
    A publishes, B publishes"."""
    one = opener()
    two = opener() if opener.mode == "server" else VectorStore(one.backend, owns_backend=False)  # type: ignore[attr-defined]
    try:
        await new_collection(one, name)
        for n, order in enumerate(interleavings(["a1", "a2", "a3"], ["b1", "b2", "b3"])):
            doc_id = f"doc-{n}"
            first = await ingest(one, name, doc_id, ["the first version", "of this document"])
            writers = {"a": (one, staged_version(name, doc_id, [f"writer a of {doc_id}", "part two", "part three"])),
                       "b": (two, staged_version(name, doc_id, [f"writer b of {doc_id}"]))}
            versions = {first.version: ["the first version", "of this document"],
                        **{s.info.version: [p.payload["text"] for p in s.points] for _, s in writers.values()}}
            superseded: dict[str, dict[str, list[str]]] = {}
            for step in order:
                store, staged = writers[step[0]]
                if step[1] == "1":
                    await store._run(protocol.stage, store.backend, name, [staged])
                elif step[1] == "2":
                    superseded[step[0]] = await store._run(protocol.commit, store.backend, name, [staged])
                else:
                    await store._run(protocol.publish, store.backend, name, {doc_id: staged.info.version},
                                     superseded[step[0]])
            winner = await assert_whole(one, name, doc_id, versions)
            assert winner != first.version, order
            assert await assert_whole(two, name, doc_id, versions) == winner
        if opener.mode != "server":  # type: ignore[attr-defined]
            assert await one.recover() == {"published": 0, "deleted": 0}
    finally:
        await two.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_concurrent_batches_from_two_instances_lose_nothing(opener: Opener, name: str) -> None:
    one = opener()
    two = opener() if opener.mode == "server" else VectorStore(one.backend, owns_backend=False)  # type: ignore[attr-defined]
    try:
        await new_collection(one, name)
        # the second store's first operation runs its recovery: before either writes, as a restarted process's
        # would (embedded it takes staged points nobody it knows is writing for a dead writer's)
        await two.ping()
        written: dict[str, dict[str, list[str]]] = {}

        async def writer(store: VectorStore, tag: str) -> None:
            for round_ in range(4):
                docs = []
                for i in range(6):
                    texts = [f"{tag} round {round_} doc {i} part {k}" for k in range(1 + (i + round_) % 3)]
                    docs.append(protocol_doc(f"d{i}", texts))
                for info, doc in zip(await store.write_documents(name, docs), docs, strict=True):
                    written.setdefault(info.doc_id, {})[info.version] = [c.text for c in doc.chunks]

        await asyncio.gather(writer(one, "one"), writer(two, "two"))
        for doc_id, versions in written.items():
            await assert_whole(one, name, doc_id, versions)
        chunks = 0
        for doc_id in written:
            chunks += len((await one.get_document(name, doc_id))[1])
        assert await one.count(name) == chunks
    finally:
        await two.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_write_overtaken_after_its_commit_landed_is_not_committed_again(
        opener: Opener, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our compare-and-set lands; before we read the registry back, another writer commits a newer version
    over ours and publishes it, which deletes our points. Our write is overtaken: theirs stays, whole. A
    writer that took the read-back for a lost race and committed again would leave the entry naming a
    version with no points (seen with two writers of one document under load)."""
    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    await ingest(store, name, "doc", ["old one"])
    registry = registry_name(name)
    theirs = staged_version(name, "doc", ["their one", "their two"])
    upsert, raced = store.backend.upsert, []

    def overtaking_upsert(collection: str, points: Any, **kwargs: Any) -> Any:
        result = upsert(collection, points, **kwargs)
        if collection == registry and not raced:  # our commit just landed
            raced.append(True)
            protocol.stage(store.backend, name, [theirs])
            superseded = protocol.commit(store.backend, name, [theirs])
            protocol.publish(store.backend, name, {"doc": theirs.info.version}, superseded)
        return result

    monkeypatch.setattr(store.backend, "upsert", overtaking_upsert)
    ours = await ingest(store, name, "doc", ["our one"])
    monkeypatch.setattr(store.backend, "upsert", upsert)
    assert raced and ours.version != theirs.info.version
    info, chunks = await store.get_document(name, "doc")
    assert info.version == theirs.info.version
    assert [c.text for c in chunks] == ["their one", "their two"]
    assert {(p["version"], p["state"]) for p in (await raw_points(store, name)).values()} == {
        (theirs.info.version, LIVE)}, "our overtaken version's points were left behind"
    assert await texts_found(store, name) == ["their one", "their two"]


def texts_of(i: int, round_: int) -> list[str]:
    """The chunk texts of version `round_` of document `i` (1 to 3 chunks)."""
    return [f"document {i} version {round_} part {k}" for k in range(1 + (i + round_) % 3)]


def protocol_doc(doc_id: str, texts: list[str]) -> Any:
    from services.rag.store import DocumentWrite

    return DocumentWrite(doc_id=doc_id, source=None, metadata=None, chunks=chunks_of(texts),
                         dense=[embed(t) for t in texts], sparse=BM25.encode_documents(texts))


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
async def test_recovery_runs_periodically_while_the_store_is_open(opener: Opener, name: str) -> None:
    """A writer that died between commit and publish (here: another instance over the same engine) is
    finished by the running store's periodic recovery, with no restart and no read of the document."""
    store = opener(recover_interval_s=0.2)
    await new_collection(store, name)
    old = await ingest(store, name, "doc", ["old one", "old two", "old three"])
    staged = staged_version(name, "doc", ["new one", "new two"])
    store._busy[staged.info.version] = 1  # a writer of this process, as `write_documents` announces itself
    await store._run(protocol.stage, store.backend, name, [staged])
    await store._run(protocol.commit, store.backend, name, [staged])
    del store._busy[staged.info.version]  # and its task dies here: no publish
    deadline = time.monotonic() + 10
    while True:
        points = await raw_points(store, name)
        states = {(p["version"], p["state"]) for p in points.values()}
        if states == {(staged.info.version, LIVE)}:
            break
        assert time.monotonic() < deadline, f"not recovered: {states} (old {old.version})"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_read_of_a_committed_version_with_no_live_points_publishes_it(opener: Opener, name: str) -> None:
    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    await ingest(store, name, "doc", ["old one", "old two", "old three"])
    staged = staged_version(name, "doc", ["new one", "new two"])
    await store._run(protocol.stage, store.backend, name, [staged])
    await store._run(protocol.commit, store.backend, name, [staged])  # and the writer dies
    info, chunks = await store.get_document(name, "doc")
    assert info.version == staged.info.version and [c.text for c in chunks] == ["new one", "new two"]
    assert await assert_whole(store, name, "doc", {staged.info.version: ["new one", "new two"]})


@pytest.mark.asyncio(loop_scope="session")
async def test_list_documents_reads_one_page_not_the_whole_registry(store: VectorStore, name: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await new_collection(store, name)
    docs = [protocol_doc(f"doc-{i:03d}", [f"text {i}"]) for i in range(300)]
    for start in range(0, len(docs), 100):
        await store.write_documents(name, docs[start:start + 100])
    read: list[int] = []
    backend = store.backend
    for method in ("scroll", "retrieve", "ordered", "query"):
        original = getattr(backend, method)

        def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            result = _original(*args, **kwargs)
            records = result[0] if isinstance(result, tuple) else result
            if args and args[0] == registry_name(name):
                read.append(len(records))
            return result

        monkeypatch.setattr(backend, method, counted)
    page, total = await store.list_documents(name, limit=5, offset=200)
    assert total == 300 and [d.doc_id for d in page] == [f"doc-{i:03d}" for i in range(200, 205)]
    assert sum(read) <= 5, f"read {sum(read)} registry entries for a page of 5"


# -- the embedded fast path: searches skip the registry lookup while the collection is settled --------------


async def texts_found(store: VectorStore, collection: str) -> list[str]:
    hits = await store.search([collection], dense=embed("one two three"), sparse=None, mode="dense", top_k=50)
    return sorted(hit.text for hit in hits)


def count_registry_reads(store: VectorStore, collection: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    original = store.backend.retrieve

    def retrieve(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == registry_name(collection):
            reads.append(1)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(store.backend, "retrieve", retrieve)
    return reads


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
async def test_a_publish_that_fails_half_way_is_never_read_as_two_versions(opener: Opener, name: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled, a search reads no registry entry. A publish that fails after the new version went live and
    before the old one went leaves both live: the collection is unsettled, its searches keep the registry's
    version only, until recovery finishes the publish and settles it again."""
    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    await ingest(store, name, "doc", ["old one", "old two"])
    reads = count_registry_reads(store, name, monkeypatch)
    assert await texts_found(store, name) == ["old one", "old two"]
    assert reads == [], "a settled collection's search read the registry"
    delete = store.backend.delete

    def failing_delete(collection: str, *args: Any, **kwargs: Any) -> Any:
        if collection == name:
            raise RuntimeError("no space left on device")
        return delete(collection, *args, **kwargs)

    monkeypatch.setattr(store.backend, "delete", failing_delete)
    with pytest.raises(RuntimeError):
        await ingest(store, name, "doc", ["new one", "new two", "new three"])
    assert {p["state"] for p in (await raw_points(store, name)).values()} == {LIVE}
    assert await store.count(name) == 5  # both versions live: what a search must not show
    assert await texts_found(store, name) == ["new one", "new three", "new two"]
    monkeypatch.setattr(store.backend, "delete", delete)
    assert await store.recover() == {"published": 0, "deleted": 2}
    reads.clear()
    assert await texts_found(store, name) == ["new one", "new three", "new two"]
    assert reads == []


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory"], indirect=True)
async def test_a_cancelled_write_holds_readers_off_until_its_thread_is_done(opener: Opener, name: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit + publish runs on a thread that a cancellation cannot stop: the caller's cancellation waits
    for it, so no reader runs between the new version going live and the old one going."""
    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    await ingest(store, name, "doc", ["old one", "old two"])
    delete, deleting = store.backend.delete, asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_delete(collection: str, *args: Any, **kwargs: Any) -> Any:
        if collection == name:
            loop.call_soon_threadsafe(deleting.set)
            time.sleep(0.5)
        return delete(collection, *args, **kwargs)

    monkeypatch.setattr(store.backend, "delete", slow_delete)
    task = asyncio.create_task(ingest(store, name, "doc", ["new one", "new two", "new three"]))
    await deleting.wait()  # the new version is live, the old one not gone yet
    task.cancel()
    assert await texts_found(store, name) == ["new one", "new three", "new two"]
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("opener", ["memory", "folder"], indirect=True)
async def test_recovery_leaves_alone_a_version_made_after_it_read_the_writers(opener: Opener, name: str) -> None:
    """Recovery reads which versions are being written, then scans the staged points: a writer that made its
    version in between is not in what recovery read, and its staged points must stay (a dead writer's go)."""
    from services.rag.store import recovery

    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    read_at_ms = time.time_ns() // 1_000_000
    await asyncio.sleep(0.01)
    staged = staged_version(name, "doc", ["being written", "by a writer that started after"])
    await store._run(protocol.stage, store.backend, name, [staged])
    assert await store._run(recovery.recover_collection, store.backend, name, set(), busy_at_ms=read_at_ms) == (0, 0)
    assert len(await raw_points(store, name)) == 2
    later_ms = time.time_ns() // 1_000_000 + 1
    assert await store._run(recovery.recover_collection, store.backend, name, set(), busy_at_ms=later_ms) == (0, 2)
    assert await raw_points(store, name) == {}


@pytest.mark.asyncio(loop_scope="session")
async def test_recovery_leaves_a_writer_between_commit_and_publish_alone(opener: Opener, name: str) -> None:
    """An unpublished entry that is another writer's (this process's, or on a server a young one) is not
    published by recovery, not even as "committed but not live": that would mark it published with nothing
    superseded and leave the old version's points for good."""
    from services.rag.store import recovery

    store = opener(recover_interval_s=0)
    await new_collection(store, name)
    old = await ingest(store, name, "doc", ["old one", "old two"])
    staged = staged_version(name, "doc", ["new one"])
    await store._run(protocol.stage, store.backend, name, [staged])
    await store._run(protocol.commit, store.backend, name, [staged])
    busy = set() if opener.mode == "server" else {staged.info.version}  # type: ignore[attr-defined]
    assert await store._run(recovery.recover_collection, store.backend, name, busy) == (0, 0)
    states = {(p["version"], p["state"]) for p in (await raw_points(store, name)).values()}
    assert states == {(old.version, LIVE), (staged.info.version, "staged")}
