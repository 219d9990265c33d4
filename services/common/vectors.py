"""The sparse vector shape (Qdrant's): what the embeddings service's SPLADE model returns, what the RAG
service's BM25 encoder makes and its store writes, without any of them importing the others."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SparseVector:
    """Non-zero weights over a vocabulary."""

    indices: list[int]
    values: list[float]
