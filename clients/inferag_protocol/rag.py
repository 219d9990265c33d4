"""Wire models of the RAG routes (`/rag/*`) and the records they carry (chunks, documents, hits, collections).

Requests forbid unknown fields (a typo in `top_k` should not silently use the default);
limits live in the types so a bad value is a 400 before any work. The orchestrator's parts
(chunker, store, ingestion, retrieval) pass the records below to one another as they are.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from .common import Seed, Strict, new_id
from .graph import GraphEvidence, GraphMode

# ---------------------------------------------------------------- records

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


CollectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
DocumentFormat = Literal["text", "markdown", "html"]


# ---------------------------------------------------------------- collections


class CollectionCreate(Strict):
    name: CollectionName
    graph: GraphMode | None = Field(
        None,
        description="Knowledge graph extracted at ingestion: off, keyphrase (model-free) or llm (the generation "
        "model, structured output); default: the service's `graph_default` (keyphrase).",
    )


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionInfo]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


# ---------------------------------------------------------------- chunking and ingestion


class ChunkRequest(Strict):
    text: str
    format: DocumentFormat = "text"
    chunking: dict[str, Any] | None = Field(None, description="ChunkingParams; default: the service's.")


class ChunkResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Chunk]
    strategy: str
    max_tokens: int


class DocumentIn(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="Default: derived from the content hash, so the same text is the same document."
    )
    text: str | None = Field(None, description="The document's text; or give `url`.")
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = Field(
        None,
        description="A web page (or file) to fetch over http(s) and convert by its content; `source` defaults to it "
        "and the id to one derived from it. Non-public addresses are refused unless INFERAG_RAG_FETCH_ALLOW_NETWORKS "
        "holds them.",
    )
    format: DocumentFormat = "text"
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _text_or_url(self) -> DocumentIn:
        if (self.text is None) == (self.url is None):
            raise ValueError("give exactly one of 'text' or 'url'")
        if self.url is not None and self.source is not None:
            raise ValueError("a url document's source is its URL: leave 'source' out")
        return self


class IngestRequest(Strict):
    documents: Annotated[list[DocumentIn], Field(min_length=1)]
    chunking: dict[str, Any] | None = None
    background: bool | None = Field(
        None, description="Run as a job and answer 202 at once; default: only for large requests."
    )


class IngestResult(BaseModel):
    object: Literal["ingest.result"] = "ingest.result"
    collection: str
    documents: list[DocumentInfo]
    chunks: int


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentInfo]
    total: int


class DocumentDetail(DocumentInfo):
    collection: str
    data: list[StoredChunk]


class JobError(BaseModel):
    document: str
    message: str
    code: str | None = None


class Job(BaseModel):
    id: str = Field(default_factory=lambda: new_id("job"))
    object: Literal["job"] = "job"
    collection: str
    status: Literal["queued", "running", "succeeded", "failed", "partial"] = "queued"
    documents_total: int = 0
    documents_done: int = 0
    documents_failed: int = 0
    chunks_done: int = 0
    errors: list[JobError] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]


# ---------------------------------------------------------------- retrieval


class _Targets(Strict):
    collection: CollectionName | None = None
    collections: Annotated[list[CollectionName], Field(min_length=1, max_length=16)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _Targets:
        if (self.collection is None) == (self.collections is None):
            raise ValueError("give exactly one of 'collection' or 'collections'")
        return self

    def targets(self) -> list[str]:
        return [self.collection] if self.collection is not None else list(dict.fromkeys(self.collections or []))


class RetrieveRequest(_Targets):
    query: NonEmpty
    top_k: int = Field(10, ge=1, le=100)
    mode: RetrievalMode = "hybrid"
    fusion: Fusion = "rrf"
    filter: MetadataFilter | None = None
    score_threshold: float | None = None


class RetrieveResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Hit]
    timings: dict[str, float]


class RerankRequest(Strict):
    query: NonEmpty
    documents: list[str] | None = Field(None, description="Passages to rank.")
    hits: list[Hit] | None = Field(None, description="Or hits of a retrieval, returned reordered.")
    top_n: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> RerankRequest:
        if (self.documents is None) == (self.hits is None):
            raise ValueError("give exactly one of 'documents' or 'hits'")
        return self


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None
    hit: Hit | None = None


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[RerankResult]


# ---------------------------------------------------------------- answers


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class QueryRequest(_Targets):
    query: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    top_k: int = Field(20, ge=1, le=100, description="Chunks retrieved before reranking.")
    rerank: bool | None = Field(
        None,
        description="Rerank the retrieved chunks before keeping the best; default: when the rerank service has a "
        "cross-encoder, or when a score threshold applies (it compares rerank scores).",
    )
    rerank_top_n: int = Field(5, ge=1, le=50, description="Sources given to the model (the best after reranking).")
    mode: RetrievalMode = "hybrid"
    fusion: Fusion = "rrf"
    filter: MetadataFilter | None = None
    score_threshold: float | None = Field(
        None, description="Sources under this retrieval score are dropped; none left means 'I don't know'."
    )
    rewrite_query: bool = Field(False, description="Turn a follow-up into a standalone question before retrieval.")
    expand_queries: int = Field(0, ge=0, le=4, description="Extra paraphrases retrieved and fused (multi-query).")
    context: ContextMode | None = Field(
        None,
        description="What the model reads of each source: `sentences` (those closest to the question, with their "
        "neighbours) or `chunks` (whole chunks); default: the service's `context_mode`.",
    )
    context_tokens: int | None = Field(
        None, ge=32, le=8192, description="Token budget of the sources in the prompt; default: `context_tokens`."
    )
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: Seed | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _question(self) -> QueryRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of 'query' or 'messages'")
        if self.query is not None and not self.query.strip():
            raise ValueError("query must not be empty")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's question")
        return self

    def question(self) -> str:
        return self.query if self.query is not None else (self.messages or [])[-1].content


class Quote(BaseModel):
    """The sentence of a source that supports the answer: `text` is a substring of the source's text,
    at document offsets `start`..`end`."""

    text: str
    start: int
    end: int


class Citation(BaseModel):
    """A numbered source (`/rag/query`, `rag:` chat and the agent); `quote` once the answer cites it."""

    number: int
    id: str = Field(description="The chunk's id.")
    collection: str
    doc_id: str
    source: str | None = None
    text: str = Field(description="The chunk's text.")
    start: int = Field(description="Document offset of the chunk's first character.")
    end: int
    score: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    graph: GraphEvidence | None = Field(None, description="Graph retrieval: the entities and relations behind it.")
    quote: Quote | None = Field(None, description="The supporting sentence, on cited sources.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class QueryResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("rag"))
    object: Literal["rag.answer"] = "rag.answer"
    model: str
    answer: str
    citations: list[Citation]
    sources: list[Citation] = Field(description="Every source given to the model, numbered as in the prompt.")
    query: str = Field(description="The query used for retrieval (rewritten when asked).")
    usage: Usage
    timings: dict[str, float]
    finish_reason: str | None = None


# ---------------------------------------------------------------- /rag/query stream events


class RetrievalEvent(BaseModel):
    """First event: the query used for retrieval and the sources given to the model."""

    type: Literal["retrieval"] = "retrieval"
    query: str
    sources: list[Citation]


class DeltaEvent(BaseModel):
    """A piece of the answer's text."""

    type: Literal["delta"] = "delta"
    text: str


class CitationsEvent(BaseModel):
    """The sources the answer cites, each with its quote, after the last delta."""

    type: Literal["citations"] = "citations"
    citations: list[Citation]


class DoneEvent(BaseModel):
    """Last event: token usage, stage timings (milliseconds) and finish reason."""

    type: Literal["done"] = "done"
    model: str
    usage: Usage
    timings: dict[str, float]
    finish_reason: str | None = None


class ErrorEvent(BaseModel):
    """A failure after the stream started (its OpenAI error body), then the end."""

    type: Literal["error"] = "error"
    error: dict[str, Any]


QueryEvent = Annotated[
    RetrievalEvent | DeltaEvent | CitationsEvent | DoneEvent | ErrorEvent, Field(discriminator="type")
]
