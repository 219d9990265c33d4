"""The retrieval stage: dense, sparse, hybrid through Qdrant's query API; graph and hybrid+graph through the
collection's knowledge graph (services/rag/graph); reranking of hits.

`Retriever.retrieve` is `/rag/retrieve`; `best_sources` (retrieve for each query, union, rerank, threshold)
is what `/rag/query`, `rag:` chat, the Responses API and the agent's knowledge-base search all answer from,
with the same depths (`search_depth`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from inferag_protocol.rag import Fusion, Hit, MetadataFilter, RetrievalMode
from services.common.errors import InvalidRequest
from services.embeddings.client import Embedder, Reranker

from .bm25 import BM25Encoder
from .graph.fusion import rrf
from .graph.service import GraphService
from .metrics import Timings
from .store import VectorStore

GRAPH_MODES = ("graph", "hybrid+graph")
# hits of each list fused in hybrid+graph, per hit asked (Qdrant's hybrid prefetches 4 * top_k)
FUSION_DEPTH = 4
GRAPH_WEIGHT = 1.0
# Sources an answer's search retrieves before reranking: RERANK_POOL per source kept, at least MIN_DEPTH
# (so /rag/query's defaults, top_k 20 and rerank_top_n 5, are the agent's search of 5).
RERANK_POOL = 4
MIN_DEPTH = 20


def search_depth(keep: int) -> int:
    """Hits to retrieve for an answer that keeps `keep` sources."""
    return max(keep * RERANK_POOL, MIN_DEPTH)


class Retriever:
    def __init__(
        self, store: VectorStore, embedder: Embedder, reranker: Reranker, sparse: BM25Encoder,
        graph: GraphService | None = None,
    ):
        self.store, self.embedder, self.reranker, self.sparse, self.graph = store, embedder, reranker, sparse, graph

    async def retrieve(
        self,
        collections: list[str],
        query: str,
        *,
        top_k: int = 10,
        mode: RetrievalMode = "hybrid",
        fusion: Fusion = "rrf",
        filter: MetadataFilter | None = None,
        score_threshold: float | None = None,
        timings: Timings | None = None,
    ) -> list[Hit]:
        """Best `top_k` chunks over `collections` (each must exist: 404 otherwise)."""
        timings = timings if timings is not None else Timings()
        for name in collections:
            await self.store.check_embedding(name, self.embedder.embed_model, self.embedder.dimension)
        if mode in GRAPH_MODES:
            return await self._graph_retrieve(collections, query, mode, fusion, top_k, filter, score_threshold,
                                              timings)
        dense = sparse = None
        with timings.stage("embed"):
            if mode in ("dense", "hybrid"):
                dense = (await self.embedder.embed([query]))[0]
            if mode in ("sparse", "hybrid"):
                sparse = await asyncio.to_thread(self.sparse.encode_query, query)
        with timings.stage("retrieve"):
            return await self.store.search(
                collections,
                dense=dense,
                sparse=sparse,
                mode=mode,
                fusion=fusion,
                top_k=top_k,
                filter=filter,
                score_threshold=score_threshold,
            )

    async def _graph_retrieve(self, collections: list[str], query: str, mode: RetrievalMode, fusion: Fusion,
                              top_k: int, filter: MetadataFilter | None, score_threshold: float | None,
                              timings: Timings) -> list[Hit]:
        """graph: the graph walk's chunks; hybrid+graph: those fused with dense and sparse search by RRF, each
        list as deep as hybrid's prefetches (so with no graph hit it ranks as hybrid does)."""
        if self.graph is None:
            raise InvalidRequest(f"Retrieval mode '{mode}' is not available in this service.", param="mode")
        if mode == "hybrid+graph" and fusion != "rrf":
            raise InvalidRequest("hybrid+graph fuses by RRF; fusion 'dbsf' applies to hybrid only.", param="fusion")
        await self.graph.require_for_mode(collections, mode)
        with timings.stage("embed"):
            dense = (await self.embedder.embed([query]))[0]
            sparse = await asyncio.to_thread(self.sparse.encode_query, query) if mode != "graph" else None
        with timings.stage("retrieve"):
            if mode == "graph":
                hits = await self.graph.search(collections, query, dense, top_k=top_k, filter=filter)
            else:
                depth = top_k * FUSION_DEPTH
                runs = await asyncio.gather(
                    self.store.search(collections, dense=dense, sparse=None, mode="dense", top_k=depth, filter=filter),
                    self.store.search(collections, dense=None, sparse=sparse, mode="sparse", top_k=depth,
                                      filter=filter),
                    self.graph.search(collections, query, dense, top_k=depth, filter=filter),
                )
                hits = rrf(runs, top_k, weights=(1.0, 1.0, GRAPH_WEIGHT))
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        return hits[:top_k]

    def should_rerank(self, asked: bool | None, thresholded: bool = False) -> bool:
        """`asked`, or by default: with a cross-encoder (a bi-encoder's cosine mostly re-sorts what dense
        retrieval already ranked, and undoes hybrid fusion), or to score sources against a threshold."""
        if asked is not None:
            return asked
        return thresholded or self.reranker.rerank_method == "cross-encoder"

    async def rerank(
        self, query: str, hits: list[Hit], top_n: int | None = None, timings: Timings | None = None
    ) -> list[Hit]:
        """`hits` reordered by the reranker, each with the reranker's score."""
        if not hits:
            return []
        timings = timings if timings is not None else Timings()
        with timings.stage("rerank"):
            ranked = await self.reranker.rerank(query, [h.text for h in hits], top_n)
        return [hits[i].model_copy(update={"score": score}) for i, score in ranked]


class Searcher(Protocol):
    """What `best_sources` needs of a retriever (`Retriever`, or a test's fixed one)."""

    async def retrieve(self, collections: list[str], query: str, *, top_k: int = 10, mode: RetrievalMode = "hybrid",
                       fusion: Fusion = "rrf", filter: MetadataFilter | None = None,
                       timings: Timings | None = None) -> list[Hit]: ...

    def should_rerank(self, asked: bool | None, thresholded: bool = False) -> bool: ...

    async def rerank(self, query: str, hits: list[Hit], top_n: int | None = None,
                     timings: Timings | None = None) -> list[Hit]: ...


async def best_sources(
    retriever: Searcher,
    collections: list[str],
    queries: list[str],
    *,
    keep: int,
    top_k: int | None = None,
    mode: RetrievalMode = "hybrid",
    fusion: Fusion = "rrf",
    filter: MetadataFilter | None = None,
    rerank: bool | None = None,
    score_threshold: float | None = None,
    timings: Timings | None = None,
) -> list[Hit]:
    """The best `keep` sources for `queries` (the first is the question, the others its rephrasings): `top_k`
    (default `search_depth(keep)`) retrieved for each, their union (best score per chunk), reranked when
    `should_rerank` says so against the first query, then those under `score_threshold` dropped."""
    depth = top_k if top_k is not None else search_depth(keep)
    runs = await asyncio.gather(*(
        retriever.retrieve(collections, q, top_k=depth, mode=mode, fusion=fusion, filter=filter, timings=timings)
        for q in queries
    ))  # fmt: skip
    best: dict[str, Hit] = {}
    for hit in (h for run in runs for h in run):
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    hits = sorted(best.values(), key=lambda h: -h.score)[:depth]
    if retriever.should_rerank(rerank, score_threshold is not None):
        hits = await retriever.rerank(queries[0], hits, keep, timings)
    if score_threshold is not None:
        hits = [h for h in hits if h.score >= score_threshold]
    return hits[:keep]
