"""Graph RAG through the in-process stack: real MiniLM embeddings, embedded Qdrant, the keyphrase extractor,
the LLM extractor on the tiny generator, graph routes, graph retrieval modes, incremental updates."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import networkx as nx
import pytest
import pytest_asyncio

from tests.rag_stack import rag_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
_LINES = (ROOT / "datasets" / "multihop" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
CORPUS = {row["_id"]: row for row in map(json.loads, _LINES)}
# two bridge pairs of the multihop set and documents of the same kinds around them
DOC_IDS = ["mus-valcourt", "ens-tessaly", "mus-achterberg", "ens-brennock", "ens-pellucid", "ens-gannet",
           "ens-lindqvist", "mus-ilic", "ens-x00", "ens-x01", "ens-x02", "ens-p00"]  # fmt: skip
QUESTION = "In which town does the orchestra of violinist Oriane Valcourt rehearse?"


def _doc(doc_id: str, **metadata: Any) -> dict[str, Any]:
    row = CORPUS[doc_id]
    return {"id": doc_id, "text": f"{row['title']}\n\n{row['text']}", "source": row["title"], "metadata": metadata}


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    folder = tmp_path_factory.mktemp("graph-api")  # snapshots are written under the data folder
    async with rag_stack(tiny_model_dir, graph_llm_max_tokens=160, data_dir=str(folder)) as (c, _):
        docs = [_doc(d, kind="person" if d.startswith("mus-") or d.endswith("p00") else "ensemble") for d in DOC_IDS]
        resp = await c.post("/rag/collections/music/documents", json={"documents": docs})
        assert resp.status_code == 200, resp.text
        yield c


async def _entity(c: httpx.AsyncClient, collection: str, name: str) -> dict[str, Any]:
    listing = (await c.get(f"/rag/collections/{collection}/graph/entities", params={"q": name, "limit": 5})).json()
    found = [e for e in listing["data"] if e["name"] == name]
    assert found, listing
    return found[0]


# ---------------------------------------------------------------- graph on by default, the routes


async def test_new_collections_get_the_keyphrase_graph(stack: httpx.AsyncClient) -> None:
    info = (await stack.get("/rag/collections/music")).json()
    assert info["settings"] == {"graph": "keyphrase"}
    stats = (await stack.get("/rag/collections/music/graph")).json()
    assert stats["mode"] == "keyphrase" and stats["documents"] == len(DOC_IDS) and stats["chunks"] == len(DOC_IDS)
    assert stats["entities"] == stats["entity_points"] > 20 and stats["relations"] > 10


async def test_entities_listing_and_detail(stack: httpx.AsyncClient) -> None:
    orchestra = await _entity(stack, "music", "Tessaly Chamber Orchestra")
    assert orchestra["type"] == "NAME" and orchestra["documents"] == 2 and orchestra["degree"] > 0
    assert orchestra["score"] == 1.0  # matched by name
    top = (await stack.get("/rag/collections/music/graph/entities", params={"limit": 3})).json()
    assert len(top["data"]) == 3 and top["total"] > 20
    assert top["data"][0]["degree"] >= top["data"][-1]["degree"]
    detail = (await stack.get(f"/rag/collections/music/graph/entities/{orchestra['id']}")).json()
    assert detail["object"] == "graph.entity" and detail["name"] == "Tessaly Chamber Orchestra"
    assert {c["doc_id"] for c in detail["linked_chunks"]} == {"mus-valcourt", "ens-tessaly"}
    assert "Ambrose Kettering" in {n["name"] for n in detail["neighbours"]}  # named in one sentence with it
    founder = next(r for r in detail["relations"] if "Ambrose Kettering" in (r["source_name"], r["target_name"]))
    assert founder["description"].startswith("The Tessaly Chamber Orchestra was founded in 1962")
    assert founder["doc_ids"] == ["ens-tessaly"]
    by_meaning = (await stack.get("/rag/collections/music/graph/entities", params={"q": "symphony"})).json()
    assert by_meaning["data"] and all(e["score"] is not None for e in by_meaning["data"])


async def test_export_graphml_and_json(stack: httpx.AsyncClient) -> None:
    stats = (await stack.get("/rag/collections/music/graph")).json()
    resp = await stack.get("/rag/collections/music/graph/export", params={"format": "graphml"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/graphml+xml")
    graph = nx.parse_graphml(resp.text)
    assert (graph.number_of_nodes(), graph.number_of_edges()) == (stats["entities"], stats["relations"])
    names = {d["name"] for _, d in graph.nodes(data=True)}
    assert {"Oriane Valcourt", "Tessaly Chamber Orchestra", "Medrin"} <= names
    data = (await stack.get("/rag/collections/music/graph/export", params={"format": "json"})).json()
    assert len(data["nodes"]) == stats["entities"] and len(data["edges"]) == stats["relations"]


async def test_graph_route_errors(stack: httpx.AsyncClient) -> None:
    assert_error(await stack.get("/rag/collections/music/graph/entities/not-an-entity"), 404, "entity_not_found")
    assert_error(await stack.get("/rag/collections/nowhere/graph/entities"), 404)
    assert_error(await stack.get("/rag/collections/music/graph/export", params={"format": "gexf"}), 400)
    assert_error(await stack.get("/rag/collections/music/graph/entities", params={"limit": 0}), 400)


async def test_a_collection_without_graph(stack: httpx.AsyncClient) -> None:
    created = await stack.post("/rag/collections", json={"name": "plain", "graph": "off"})
    assert created.status_code == 200 and created.json()["settings"] == {"graph": "off"}
    await stack.post("/rag/collections/plain/documents", json={"documents": [_doc("mus-valcourt")]})
    for path in ("graph", "graph/entities", "graph/export", "graph/entities/x"):
        error = assert_error(await stack.get(f"/rag/collections/plain/{path}"), 409, "no_graph")
        assert "has no knowledge graph" in error["message"] and "graph 'keyphrase'" in error["message"]
    for mode in ("graph", "hybrid+graph"):
        for route in ("/rag/retrieve", "/rag/query", "/rag/agent"):
            error = assert_error(await stack.post(route, json={"collection": "plain", "query": "x", "mode": mode}), 400)
            assert error["param"] == "mode" and "needs a knowledge graph" in error["message"]
    plain = await stack.post("/rag/retrieve", json={"collection": "plain", "query": "violinist", "mode": "hybrid"})
    assert plain.status_code == 200 and plain.json()["data"][0]["graph"] is None
    # a collection's graph mode is set at creation: asking again for another is a conflict, asking again is not
    assert_error(await stack.post("/rag/collections", json={"name": "plain", "graph": "keyphrase"}), 409)
    assert (await stack.post("/rag/collections", json={"name": "plain"})).status_code == 200
    assert_error(await stack.post("/rag/collections", json={"name": "plain", "graph": "maybe"}), 400)


# ---------------------------------------------------------------- retrieval


async def test_graph_retrieval_brings_in_the_bridge_document(stack: httpx.AsyncClient) -> None:
    body = {"collection": "music", "query": QUESTION, "top_k": 5}
    hits = (await stack.post("/rag/retrieve", json={**body, "mode": "graph"})).json()["data"]
    by_doc = {h["doc_id"]: h for h in hits}
    assert list(by_doc)[0] == "mus-valcourt" and "ens-tessaly" in by_doc, list(by_doc)
    bridge = by_doc["ens-tessaly"]["graph"]  # reached through her orchestra, which the question does not name
    hops = {e["name"]: e["hop"] for e in bridge["entities"]}
    assert hops["Tessaly Chamber Orchestra"] == 1
    assert ("Oriane Valcourt", "Tessaly Chamber Orchestra") in {(r["source_name"], r["target_name"])
                                                                 for r in bridge["relations"]}  # fmt: skip
    fused = (await stack.post("/rag/retrieve", json={**body, "mode": "hybrid+graph"})).json()["data"]
    assert "ens-tessaly" in [h["doc_id"] for h in fused[:3]]
    assert next(h for h in fused if h["doc_id"] == "ens-tessaly")["graph"] is not None
    filtered = await stack.post("/rag/retrieve", json={**body, "mode": "graph", "filter": {"kind": "ensemble"}})
    assert {h["doc_id"] for h in filtered.json()["data"]} <= {d for d in DOC_IDS if d.startswith("ens-")}
    assert_error(await stack.post("/rag/retrieve", json={**body, "mode": "hybrid+graph", "fusion": "dbsf"}), 400)


async def test_answers_cite_graph_sources(stack: httpx.AsyncClient) -> None:
    body = {"collection": "music", "query": QUESTION, "mode": "hybrid+graph", "max_tokens": 8, "rerank": False}
    answer = (await stack.post("/rag/query", json=body)).json()
    sources = {s["doc_id"]: s for s in answer["sources"]}
    assert "ens-tessaly" in sources and sources["ens-tessaly"]["graph"]["entities"]


# ---------------------------------------------------------------- incremental updates


async def _stats(c: httpx.AsyncClient, collection: str) -> dict[str, Any]:
    stats = (await c.get(f"/rag/collections/{collection}/graph")).json()
    return {k: stats[k] for k in ("entities", "relations", "chunks", "documents", "entity_points")}


async def test_replace_and_delete_update_only_their_document(stack: httpx.AsyncClient) -> None:
    docs = [_doc("mus-valcourt"), _doc("ens-tessaly"), _doc("mus-achterberg")]
    assert (await stack.post("/rag/collections/inc/documents", json={"documents": docs})).status_code == 200
    oriane = await _entity(stack, "inc", "Oriane Valcourt")
    orchestra = await _entity(stack, "inc", "Tessaly Chamber Orchestra")
    assert orchestra["documents"] == 2
    before = await _stats(stack, "inc")
    # replace mus-valcourt with a text that names neither her nor the orchestra
    replaced = {"id": "mus-valcourt", "text": "Greta Lindholm measures how much carbon the fields of Crayford store."}
    assert (await stack.post("/rag/collections/inc/documents", json={"documents": [replaced]})).status_code == 200
    assert_error(await stack.get(f"/rag/collections/inc/graph/entities/{oriane['id']}"), 404, "entity_not_found")
    kept = (await stack.get(f"/rag/collections/inc/graph/entities/{orchestra['id']}")).json()
    assert kept["documents"] == 1 and {c["doc_id"] for c in kept["linked_chunks"]} == {"ens-tessaly"}
    assert "Oriane Valcourt" not in {n["name"] for n in kept["neighbours"]}  # her relation went with her
    await _entity(stack, "inc", "Greta Lindholm")
    after = await _stats(stack, "inc")
    assert after["documents"] == before["documents"] and after["entities"] == after["entity_points"]
    rebuilt = (await stack.post("/rag/collections/inc/graph/rebuild")).json()
    assert {k: rebuilt[k] for k in after} == after  # the same graph as extracting everything again
    # delete the orchestra's own document: nothing names it any more
    assert (await stack.delete("/rag/collections/inc/documents/ens-tessaly")).status_code == 200
    assert_error(await stack.get(f"/rag/collections/inc/graph/entities/{orchestra['id']}"), 404)
    final = await _stats(stack, "inc")
    assert final["documents"] == 2 and final["entities"] == final["entity_points"]
    assert {k: (await stack.post("/rag/collections/inc/graph/rebuild")).json()[k] for k in final} == final


async def test_deleting_a_collection_drops_its_graph(stack: httpx.AsyncClient) -> None:
    await stack.post("/rag/collections/gone/documents", json={"documents": [_doc("ens-tessaly")]})
    assert (await stack.get("/rag/collections/gone/graph")).json()["entities"] > 0
    assert (await stack.delete("/rag/collections/gone")).status_code == 200
    await stack.post("/rag/collections/gone/documents", json={"documents": [_doc("mus-achterberg")]})
    names = {e["name"] for e in (await stack.get("/rag/collections/gone/graph/entities",
                                                  params={"limit": 100})).json()["data"]}  # fmt: skip
    assert "Tessaly Chamber Orchestra" not in names and "Gideon Achterberg" in names


async def test_a_snapshot_restores_the_graph_with_its_collection(stack: httpx.AsyncClient) -> None:
    snapshot = await stack.post("/rag/collections/music/snapshot")
    assert snapshot.status_code == 200, snapshot.text
    with tarfile.open(fileobj=io.BytesIO(snapshot.content)) as tar:
        assert "parts/_graph__.snapshot" in tar.getnames()  # the graph's companion travels with the collection
    restored = await stack.post("/rag/collections/restore", data={"name": "music-copy"},
                                files={"file": ("music.snapshot.tar.gz", snapshot.content, "application/gzip")})
    assert restored.status_code == 200, restored.text
    assert restored.json()["settings"] == {"graph": "keyphrase"}
    assert await _stats(stack, "music-copy") == await _stats(stack, "music")
    body = {"collection": "music-copy", "query": QUESTION, "top_k": 5, "mode": "graph"}
    assert "ens-tessaly" in {h["doc_id"] for h in (await stack.post("/rag/retrieve", json=body)).json()["data"]}


# ---------------------------------------------------------------- the LLM extractor, on the tiny generator


async def test_llm_collection_extracts_through_structured_output(stack: httpx.AsyncClient) -> None:
    created = await stack.post("/rag/collections", json={"name": "llm", "graph": "llm"})
    assert created.status_code == 200 and created.json()["settings"] == {"graph": "llm"}
    resp = await stack.post("/rag/collections/llm/documents", json={"documents": [_doc("ens-tessaly")]})
    assert resp.status_code == 200, resp.text
    stats = (await stack.get("/rag/collections/llm/graph")).json()
    # a random tiny model writes nonsense, but schema-valid nonsense: the graph is built from it
    assert stats["mode"] == "llm" and stats["chunks"] == 1 and stats["entities"] == stats["entity_points"]
