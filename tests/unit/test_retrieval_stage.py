"""The one retrieval stage (`best_sources`) that `/rag/query` and the agent's knowledge-base search share."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from inferag_protocol.rag import Hit, QueryRequest
from services.rag.answer import Answerer
from services.rag.metrics import RagMetrics, Timings
from services.rag.retrieval import best_sources, search_depth
from services.rag.service import KnowledgeBase
from services.rag.settings import RagSettings


def hit(n: int, score: float) -> Hit:
    return Hit(id=f"d{n}:0", doc_id=f"d{n}", chunk_index=0, text=f"text {n}", start=0, end=6, collection="kb",
               score=score)  # fmt: skip


class RecordingRetriever:
    """Answers each query with `runs[query]`; records what the stage asked; reranking reverses the order."""

    def __init__(self, runs: dict[str, list[Hit]], cross_encoder: bool = False):
        self.runs, self.cross_encoder = runs, cross_encoder
        self.calls: list[tuple[str, int, str]] = []
        self.reranked: list[tuple[str, list[str], int | None]] = []

    async def retrieve(self, collections: list[str], query: str, *, top_k: int = 10, mode: str = "hybrid",
                       **_: Any) -> list[Hit]:
        self.calls.append((query, top_k, mode))
        return self.runs[query][:top_k]

    def should_rerank(self, asked: bool | None, thresholded: bool = False) -> bool:
        return asked if asked is not None else thresholded or self.cross_encoder

    async def rerank(self, query: str, hits: list[Hit], top_n: int | None = None,
                     timings: Timings | None = None) -> list[Hit]:
        self.reranked.append((query, [h.id for h in hits], top_n))
        return [h.model_copy(update={"score": 1.0 - i / 100}) for i, h in enumerate(reversed(hits))][:top_n]


QUESTION = "how long does the battery last"
RUN = [hit(n, 1.0 - n / 100) for n in range(40)]


@pytest.mark.asyncio
@pytest.mark.parametrize("cross_encoder", [False, True])
async def test_the_agent_searches_as_rag_query_does(cross_encoder: bool) -> None:
    settings = RagSettings(qdrant_path=":memory:")
    query_side = RecordingRetriever({QUESTION: RUN}, cross_encoder)
    answerer = Answerer(query_side, None, None, len, settings, RagMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    asked = await answerer.sources(QueryRequest(collection="kb", query=QUESTION), [QUESTION], Timings())

    agent_side = RecordingRetriever({QUESTION: RUN}, cross_encoder)
    service = SimpleNamespace(retriever=agent_side, settings=settings)
    searched = await KnowledgeBase(service, mode="hybrid").search(QUESTION, ["kb"], 5)  # type: ignore[arg-type]

    assert agent_side.calls == query_side.calls == [(QUESTION, 20, "hybrid")]
    assert agent_side.reranked == query_side.reranked == ([(QUESTION, [h.id for h in RUN[:20]], 5)]
                                                          if cross_encoder else [])  # fmt: skip
    assert [h.id for h in searched] == [h.id for h in asked] and len(searched) == 5


@pytest.mark.asyncio
async def test_best_sources_unites_reranks_and_thresholds() -> None:
    runs = {"q": [hit(1, 0.9), hit(2, 0.5)], "rephrased": [hit(2, 0.8), hit(3, 0.7), hit(4, 0.1)]}
    retriever = RecordingRetriever(runs)
    found = await best_sources(retriever, ["kb"], ["q", "rephrased"], keep=3)
    # each query retrieves search_depth(3); the union keeps each chunk's best score
    assert [c[:2] for c in retriever.calls] == [("q", search_depth(3)), ("rephrased", search_depth(3))]
    assert [(h.id, h.score) for h in found] == [("d1:0", 0.9), ("d2:0", 0.8), ("d3:0", 0.7)]
    assert retriever.reranked == []

    # a threshold reranks (against the question, not a rephrasing), then drops what scores under it
    thresholded = await best_sources(retriever, ["kb"], ["q", "rephrased"], keep=3, score_threshold=0.985)
    assert retriever.reranked[-1] == ("q", ["d1:0", "d2:0", "d3:0", "d4:0"], 3)
    assert [h.id for h in thresholded] == ["d4:0", "d3:0"]
    assert search_depth(5) == 20 and search_depth(8) == 32
