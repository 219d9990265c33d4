"""Retrieval (dense, sparse, hybrid through Qdrant's query API) and reranking of hits."""

from __future__ import annotations

import asyncio

from services.embeddings.client import Embedder, Reranker

from .bm25 import BM25Encoder
from .ingest import Ingestor
from .metrics import Timings
from .store import VectorStore
from .types import Fusion, Hit, MetadataFilter, RetrievalMode


class Retriever:
    def __init__(
        self, store: VectorStore, embedder: Embedder, reranker: Reranker, sparse: BM25Encoder, ingestor: Ingestor
    ):
        self.store, self.embedder, self.reranker, self.sparse = store, embedder, reranker, sparse
        self.ingestor = ingestor

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
            await self.ingestor.check_collection(name)
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
