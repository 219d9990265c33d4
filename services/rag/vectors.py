"""The sparse vector shape the store writes and searches (Qdrant's), shared by the BM25 encoder and the store
without either importing the other (or qdrant-client, or the embeddings stack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]
