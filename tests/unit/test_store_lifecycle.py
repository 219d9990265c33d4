"""The embedded store's life outside one process: kill -9 during ingestion (real processes), snapshots in
the engine's own format, and the migration of a folder written by the previous version."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from services.common.errors import Conflict
from services.rag.store import (
    LIVE,
    Point,
    StoreNeedsMigration,
    check_folder_free,
    chunk_point_id,
    document_point_id,
    open_store,
    registry_name,
)
from services.rag.store.snapshots import migrate_local_mode
from tests.unit.test_store import BM25, DIM, MODEL, embed, ingest, protocol_doc, raw_points

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.asyncio(loop_scope="session")

# -- kill -9 during ingestion ----------------------------------------------------------------------------------

WRITER = r"""
import asyncio, sys
from services.rag.store import open_store
from tests.unit.test_store import DIM, MODEL, protocol_doc, texts_of

async def main(folder):
    store = open_store(url=None, path=folder)
    await store.create_collection("crash", dimension=DIM, embed_model=MODEL)
    for round_ in range(1000):
        docs = [protocol_doc(f"doc-{i}", texts_of(i, round_)) for i in range(round_ * 8 % 120, round_ * 8 % 120 + 16)]
        await store.write_documents("crash", docs)
        print(f"round {round_}", flush=True)

asyncio.run(main(sys.argv[1]))
"""


def kill_writer_mid_run(folder: Path) -> int:
    """Start the writer, SIGKILL it some way into a round; the last round it acknowledged."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    acknowledged = -1
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 120
        while acknowledged < 20:
            line = writer.stdout.readline()
            assert line and time.monotonic() < deadline, "the writer stopped early"
            acknowledged = int(line.split()[1])
        time.sleep(0.05 * (acknowledged % 7))  # somewhere inside a later round
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    for line in writer.stdout.read().splitlines():  # what it acknowledged before it died
        acknowledged = int(line.split()[1])
    return acknowledged


async def test_kill_9_during_ingestion_leaves_every_document_whole_old_or_new(tmp_path: Path) -> None:
    """A process writing batches of documents (new ones and new versions of earlier ones) is killed with
    SIGKILL; the reopened store holds each document whole in one version a writer wrote, none twice."""
    from tests.unit.test_store import texts_of

    folder = tmp_path / "qdrant"
    acknowledged = await asyncio.to_thread(kill_writer_mid_run, folder)
    store = open_store(url=None, path=folder)
    try:
        docs, total = await store.list_documents("crash", limit=1000)
        assert total == len(docs) == len({d.doc_id for d in docs})
        acknowledged_ids = {f"doc-{i}" for r in range(acknowledged + 1) for i in range(r * 8 % 120, r * 8 % 120 + 16)}
        assert acknowledged_ids <= {d.doc_id for d in docs}, "an acknowledged document is missing"
        chunks = 0
        for doc in docs:
            info, stored = await store.get_document("crash", doc.doc_id)
            i = int(doc.doc_id.split("-")[1])
            whole = [texts_of(i, r) for r in range(acknowledged + 2)]
            assert [c.text for c in stored] in whole, f"{doc.doc_id} is not one whole version"
            assert [c.id for c in stored] == [chunk_point_id(doc.doc_id, info.version, k) for k in range(len(stored))]
            chunks += len(stored)
        points = await raw_points(store, "crash")
        assert len(points) == chunks and {p["state"] for p in points.values()} == {LIVE}, "leftover points"
        assert await store.count("crash") == chunks
    finally:
        await store.close()


# -- snapshots ------------------------------------------------------------------------------------------------


async def test_a_snapshot_restores_into_another_store_and_its_parts_are_qdrant_shard_snapshots(
        tmp_path: Path) -> None:
    source = open_store(url=None, path=tmp_path / "a")
    target = open_store(url=None, path=tmp_path / "b")
    try:
        await source.create_collection("kb", dimension=DIM, embed_model=MODEL, metadata={"team": "ops"})
        for i in range(30):
            await ingest(source, "kb", f"doc-{i}", [f"pump {i} maintenance", f"valve {i} check"],
                         metadata={"n": i, "even": i % 2 == 0})
        await ingest(source, "kb", "doc-3", ["replaced text"])
        file = await source.snapshot("kb", tmp_path / "kb.snapshot.tar.gz")
        await ingest(source, "kb", "doc-4", ["written after the snapshot"])

        restored = await target.restore(file)
        assert (restored.name, restored.documents, restored.points) == ("kb", 30, 59)
        query = {"dense": embed("valve 7 check"), "sparse": BM25.encode_query("valve 7"), "mode": "hybrid"}
        hits = await target.search(["kb"], **query, filter={"even": False})  # type: ignore[arg-type]
        assert hits[0].text == "valve 7 check" and all(h.metadata["n"] % 2 for h in hits)
        assert [c.text for c in (await target.get_document("kb", "doc-3"))[1]] == ["replaced text"]
        assert len((await target.get_document("kb", "doc-4"))[1]) == 2  # as it was when snapshotted
        assert [d.doc_id for d in (await target.list_documents("kb", limit=3))[0]] == ["doc-0", "doc-1", "doc-2"]
        await ingest(target, "kb", "doc-new", ["the restored collection takes writes"])
        with pytest.raises(Conflict):
            await target.restore(file)
        assert (await target.restore(file, "kb-2")).documents == 30

        # each part is a shard snapshot Qdrant's engine unpacks and opens by itself
        with tarfile.open(file) as tar:
            manifest = json.loads(tar.extractfile("inferag-snapshot.json").read())  # type: ignore[union-attr]
            assert set(manifest["parts"]) == {"", "_docs__"} and manifest["collection"] == "kb"
            tar.extractall(tmp_path / "parts", filter="data")
        for part, count in (("collection", 59), ("_docs__", 30)):
            unpacked = tmp_path / f"unpacked-{part}"
            qe.EdgeShard.unpack_snapshot(str(tmp_path / "parts" / "parts" / f"{part}.snapshot"), str(unpacked))
            shard = qe.EdgeShard.load(str(unpacked))
            assert shard.count(qe.CountRequest(exact=True)) == count
            shard.close()
        with tarfile.open(tmp_path / "parts" / "parts" / "collection.snapshot") as part_tar:
            names = part_tar.getnames()
        assert any(n.startswith("segments/") and n.endswith("/files/segment.json") for n in names), names
    finally:
        await source.close()
        await target.close()


# -- the previous version's folder --------------------------------------------------------------------------


def previous_version_folder(folder: Path, docs: dict[str, list[str]]) -> None:
    """A store folder as the previous inferag wrote it: qdrant-client's local mode, a collection with named
    dense + sparse (IDF) vectors and its metadata, and the `_docs__` registry without vectors."""
    client = QdrantClient(path=str(folder))
    try:
        client.create_collection(registry_name("kb"), vectors_config={})
        client.create_collection(
            "kb", vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
            sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={"inferag": {"dimension": DIM, "embed_model": MODEL, "sparse_model": "bm25", "metadata": {}}})
        for n, (doc_id, texts) in enumerate(docs.items()):
            version = f"{n:x}-old"
            sparse = BM25.encode_documents(texts)
            client.upsert("kb", [models.PointStruct(
                id=chunk_point_id(doc_id, version, i),
                vector={"dense": embed(t), "sparse": models.SparseVector(indices=list(sparse[i].indices),
                                                                         values=list(sparse[i].values))},
                payload={"doc_id": doc_id, "chunk_index": i, "text": t, "start": 0, "end": len(t), "tokens": 2,
                         "source": f"{doc_id}.txt", "metadata": {"n": n}, "version": version, "state": LIVE})
                for i, t in enumerate(texts)])
            client.upsert(registry_name("kb"), [models.PointStruct(id=document_point_id(doc_id), vector={}, payload={
                "doc_id": doc_id, "source": f"{doc_id}.txt", "chunks": len(texts), "characters": 10,
                "metadata": {"n": n}, "version": version, "ingested_at": 1_700_000_000.0 + n})])
    finally:
        client.close()


async def test_a_previous_version_folder_is_refused_clearly_then_migrated_with_nothing_lost(tmp_path: Path) -> None:
    folder = tmp_path / "qdrant"
    docs = {f"doc-{i}": [f"pump {i} overhaul", f"seal {i} swap"] for i in range(12)}
    previous_version_folder(folder, docs)
    for attempt in (lambda: open_store(url=None, path=folder), lambda: check_folder_free(folder)):
        with pytest.raises(StoreNeedsMigration) as raised:
            attempt()
        assert "inferag collections migrate" in raised.value.message and str(folder) in raised.value.message
    copied = await asyncio.to_thread(migrate_local_mode, folder, lambda line: None)
    assert copied == {"kb": 24, registry_name("kb"): 12}
    assert [p for p in os.listdir(tmp_path) if ".local-mode-backup-" in p], "the old folder is kept"
    store = open_store(url=None, path=folder)
    try:
        info = await store.get_collection("kb")
        assert (info.documents, info.points, info.embed_model, info.sparse_model) == (12, 24, MODEL, "bm25")
        listed, total = await store.list_documents("kb", limit=100)
        assert total == 12 and [d.doc_id for d in listed] == list(docs)  # in the order they were first stored
        for doc_id, texts in docs.items():
            assert [c.text for c in (await store.get_document("kb", doc_id))[1]] == texts
        hits = await store.search(["kb"], dense=embed("seal 5 swap"), sparse=BM25.encode_query("seal 5"),
                                  mode="hybrid", top_k=3)
        assert hits[0].doc_id == "doc-5" and hits[0].text == "seal 5 swap"
        await store.write_documents("kb", [protocol_doc("doc-0", ["a new version after the migration"])])
        assert [c.text for c in (await store.get_document("kb", "doc-0"))[1]] == ["a new version after the migration"]
        assert await store.recover() == {"published": 0, "deleted": 0}
    finally:
        await store.close()


# -- the HNSW build off the process ------------------------------------------------------------------------------

def _unit_vectors(n: int, seed: int) -> list[list[float]]:
    import numpy as np

    vectors = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()


def _point_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _documents(vectors: list[list[float]], first: int = 0, sparse: bool = False) -> list[Any]:
    from inferag_protocol.rag import Chunk
    from services.common.vectors import SparseVector
    from services.rag.store import DocumentWrite

    return [DocumentWrite(doc_id=f"d{first + i}", source=None, metadata=None,
                          chunks=[Chunk(text=f"text {first + i}", start=0, end=8, tokens=2)], dense=[v],
                          sparse=[SparseVector(indices=[(first + i) % 97], values=[1.0])] if sparse else None)
            for i, v in enumerate(vectors)]


async def test_optimize_builds_the_index_while_the_event_loop_and_readers_go_on(tmp_path: Path) -> None:
    """The engine's binding holds the GIL while it optimizes (16 s for these 8,000 points here, in a thread of
    this process the event loop would not run for as long): the build runs in a child process on a copy,
    searches meanwhile answer, and the copy is swapped in. A write during the build wins: the copy is dropped."""
    store = open_store(url=None, path=tmp_path / "store", recover_interval_s=0, optimize_min_points=10**12)
    backend: Any = store.backend
    try:
        await store.create_collection("opt", dimension=384, embed_model="unit-384", sparse_model=None)
        vectors = _unit_vectors(8000, 1)  # above the engine's indexing threshold (10 MB of vectors)
        for start in range(0, 8000, 1000):
            await store.write_documents("opt", _documents(vectors[start:start + 1000], start))
        assert backend.unindexed("opt") == 8000

        # a write while the copy is being built: the build is dropped, the write kept
        building = asyncio.create_task(store.optimize("opt"))

        async def copying() -> None:
            while not any(p.name.startswith(".tmp-") for p in backend.root.iterdir()):  # noqa: ASYNC110 (files)
                assert not building.done(), building
                await asyncio.sleep(0.01)

        await asyncio.wait_for(copying(), 60)
        await store.write_documents("opt", _documents(vectors[:1], 8000))
        assert await asyncio.wait_for(building, 60) is False
        assert backend.unindexed("opt") == 8001 and await store.count("opt") == 8001

        gaps: list[float] = []
        answered = 0
        done = False

        async def search_meanwhile() -> None:
            nonlocal answered
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.05)
                i = answered % 100
                hits = await store.search(["opt"], dense=vectors[i], sparse=None, mode="dense", top_k=2)
                assert f"d{i}" in {hit.doc_id for hit in hits}  # the shard answers, before and after the swap
                answered += 1
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        searching = asyncio.create_task(search_meanwhile())
        await asyncio.sleep(0.3)  # the searches run before the build starts
        began = time.perf_counter()
        assert await asyncio.wait_for(store.optimize("opt"), 300) is True
        build_s = time.perf_counter() - began
        done = True
        await searching
        assert backend.unindexed("opt") == 0 and await store.count("opt") == 8001
        assert max(gaps) < 1.0, f"the event loop stood still {max(gaps):.1f} s during a {build_s:.1f} s build"
        assert answered > build_s / 0.2  # searches kept being answered throughout
        assert [p.name for p in backend.root.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    finally:
        await store.close()
    reopened = open_store(url=None, path=tmp_path / "store", recover_interval_s=0)
    try:
        assert reopened.backend.unindexed("opt") == 0  # type: ignore[attr-defined]
        hits = await reopened.search(["opt"], dense=vectors[7], sparse=None, mode="dense", top_k=1)
        assert hits[0].doc_id == "d7"
    finally:
        await reopened.close()


async def test_a_quiet_hybrid_collection_gets_its_index_built_in_the_background(tmp_path: Path) -> None:
    """What the service relies on: the maintenance loop builds the HNSW index of a collection that has gone
    quiet. The engine counts a hybrid collection's sparse vectors as indexed from the start; that count once
    hid the unindexed dense vectors, and the stack searched 50,000 chunks by brute force (15 ms a query)."""
    store = open_store(url=None, path=tmp_path / "store", recover_interval_s=0, optimize_idle_s=0.5,
                       optimize_min_points=5000)
    backend: Any = store.backend
    try:
        await store.create_collection("hybrid", dimension=384, embed_model="unit-384", sparse_model="bm25")
        vectors = _unit_vectors(8000, 3)  # above the engine's indexing threshold
        for start in range(0, 8000, 1000):
            await store.write_documents("hybrid", _documents(vectors[start:start + 1000], start, sparse=True))
        assert backend.unindexed("hybrid") == 8000
        deadline = time.monotonic() + 300
        while backend.unindexed("hybrid"):
            assert time.monotonic() < deadline, "the quiet collection's index was not built"
            await asyncio.sleep(0.5)
        hits = await store.search(["hybrid"], dense=vectors[7], sparse=None, mode="dense", top_k=1)
        assert hits[0].doc_id == "d7" and await store.count("hybrid") == 8000
    finally:
        await store.close()


async def test_a_crash_inside_the_swap_of_an_optimized_shard_loses_nothing(tmp_path: Path) -> None:
    """The swap is three renames (copy -> .optimized-<name>, shard -> trash, .optimized-<name> -> shard): a
    crash after the second leaves no shard but its optimized copy, which the next start puts in place; a
    crash before it leaves both, and the copy goes."""
    folder = tmp_path / "store"
    store = open_store(url=None, path=folder, recover_interval_s=0)
    name = await store.create_hidden("opt", dense={"v": 384})
    await store.upsert_points(name, [Point(id=_point_id(i), payload={"i": i}, dense={"v": v})
                                     for i, v in enumerate(_unit_vectors(10, 2))])
    await store.close()

    async def reopened_whole(state: str) -> None:
        store = open_store(url=None, path=folder, recover_interval_s=0)
        try:
            assert await store.count_points(name) == 10, state
            assert sorted(p.name for p in folder.iterdir()) == [".lock", name], state
        finally:
            await store.close()

    shutil.copytree(folder / name, folder / f".optimized-{name}")
    os.replace(folder / name, folder / ".trash-crashed")
    await reopened_whole("crashed after the second rename")
    shutil.copytree(folder / name, folder / f".optimized-{name}")
    await reopened_whole("crashed after the first rename")
