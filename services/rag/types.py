"""Records shared by the orchestrator's parts (chunker, store, ingestion, retrieval, agent).

They are pydantic models so routes can return them as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .graph.types import GraphEvidence

# graph: the collection's knowledge graph (services/rag/graph); hybrid+graph: hybrid and graph fused by RRF
RetrievalMode = Literal["dense", "sparse", "hybrid", "graph", "hybrid+graph"]
Fusion = Literal["rrf", "dbsf"]
# What an answer's prompt shows of each source: the sentences closest to the question, or whole chunks.
ContextMode = Literal["chunks", "sentences"]

# A metadata filter: {"key": value} (equality), {"key": {"any": [v1, v2]}} (any of),
# {"key": {"gte": 1, "lt": 5}} (range: gt, gte, lt, lte). Keys are metadata keys; the
# reserved keys `doc_id` and `source` filter on the document itself. All conditions must hold.
MetadataFilter = dict[str, Any]


class Chunk(BaseModel):
    """A piece of a source text: `source[start:end] == text`."""

    text: str
    start: int = Field(ge=0, description="Character offset of the first character in the source.")
    end: int = Field(ge=0, description="Character offset one past the last character.")
    tokens: int = Field(ge=0, description="Word pieces of the embedding model's tokenizer, special tokens excluded.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Strategy extras, e.g. `headings`.")


class DocumentInfo(BaseModel):
    """A stored document (one entry of the store's document registry)."""

    doc_id: str
    source: str | None = None
    chunks: int
    characters: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    version: str
    ingested_at: float


class StoredChunk(BaseModel):
    """A chunk as kept in the store, with its document's identity."""

    id: str
    doc_id: str
    chunk_index: int
    text: str
    start: int
    end: int
    tokens: int = 0
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Hit(StoredChunk):
    """A retrieved chunk and its score (higher is better)."""

    collection: str
    score: float
    graph: GraphEvidence | None = Field(None, description="Graph retrieval: the entities and relations behind it.")


class CollectionInfo(BaseModel):
    name: str
    dimension: int
    embed_model: str
    sparse_model: str
    points: int
    documents: int
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Given at creation, e.g. {'graph': 'keyphrase'}."
    )
