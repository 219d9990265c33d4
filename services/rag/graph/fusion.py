"""Reciprocal rank fusion of ranked hit lists: dense, sparse and the graph's, for hybrid+graph."""

from __future__ import annotations

from collections.abc import Sequence

from inferag_protocol.rag import Hit

# Qdrant's own RRF constant (what `hybrid` fuses dense and sparse with), so that hybrid+graph with an
# empty graph list ranks exactly as hybrid does.
RRF_K = 2


def rrf(runs: Sequence[Sequence[Hit]], top_k: int, k: int = RRF_K, weights: Sequence[float] | None = None) -> list[Hit]:
    """The `top_k` best hits of the runs by RRF, the sum over runs of 1 / (k + rank - 1) as Qdrant computes it;
    ties go to the hit ranked first in an earlier run. A hit keeps the graph evidence of the run that had it,
    and takes the fused score."""
    scores: dict[tuple[str, str], float] = {}
    hits: dict[tuple[str, str], Hit] = {}
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for r, run in enumerate(runs):
        weight = weights[r] if weights is not None else 1.0
        for rank, hit in enumerate(run, start=1):
            key = (hit.collection, hit.id)
            scores[key] = scores.get(key, 0.0) + weight / (k + rank - 1)
            first.setdefault(key, (rank, r))
            if key not in hits or hits[key].graph is None and hit.graph is not None:
                hits[key] = hit
    best = sorted(scores, key=lambda key: (-scores[key], first[key]))[:top_k]
    return [hits[key].model_copy(update={"score": scores[key]}) for key in best]
