"""Wire models of the embeddings service: OpenAI embeddings, Cohere/Jina rerank, sparse embeddings.

Limits live in the types, so a bad value fails validation (400 in the OpenAI error
body) before any model work; the configurable limits (inputs per request, documents
per rerank) are checked by the serving layer. Unknown fields are accepted and ignored
(`user`, Cohere's `max_chunks_per_doc`...), as clients send fields this server does not use.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.common.protocol import ModelCardBase

from .settings import OPENAI_MAX_INPUTS

# Characters per text: far above any model's token limit, low enough that tokenizing
# a refused input stays cheap.
MAX_TEXT_CHARS = 200_000
MAX_TOKEN_IDS = 32_768
MAX_RERANK_DOCUMENTS = 10_000

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_TOKEN_IDS)]
EmbeddingInput = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=OPENAI_MAX_INPUTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=OPENAI_MAX_INPUTS)]
)

Capability = Literal["embeddings", "rerank", "sparse-embeddings"]
RerankMethod = Literal["cross-encoder", "bi-encoder-cosine"]


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


def _check_input_shape(value: Any) -> Any:
    """Clear messages for the usual mistakes, before the union's own (less readable) errors."""
    if isinstance(value, str) and not value:
        raise ValueError("input must not be an empty string")
    if isinstance(value, list):
        if not value:
            raise ValueError("input must not be an empty list")
        if len(value) > OPENAI_MAX_INPUTS:
            raise ValueError(f"input has {len(value)} items; at most {OPENAI_MAX_INPUTS} are allowed")
        for i, item in enumerate(value):
            if item == "" or item == []:
                raise ValueError(f"input[{i}] must not be empty")
    return value


class _InputFields(_Lenient):
    input: EmbeddingInput
    truncate: bool | None = Field(
        None,
        description="Over-long inputs: true cuts them to the model's limit, false answers 400; "
        "default: the server's setting.",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        return _check_input_shape(value)

    def items(self) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or a list of token arrays."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]
        return value  # type: ignore[return-value]


# ---------------------------------------------------------------- embeddings


class EmbeddingRequest(_InputFields):
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32 bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------- sparse embeddings


class SparseEmbeddingRequest(_InputFields):
    model: str | None = Field(None, description="Default: the served sparse model.")
    return_tokens: bool = Field(False, description="Also return the vocabulary token of each index.")


class SparseVector(BaseModel):
    indices: list[int] = Field(description="Vocabulary ids with a non-zero weight, ascending.")
    values: list[float]


class SparseEmbedding(BaseModel):
    object: Literal["sparse_embedding"] = "sparse_embedding"
    index: int
    embedding: SparseVector
    tokens: list[str] | None = None


class SparseEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[SparseEmbedding]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------- rerank


class RerankDocument(_Lenient):
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class RerankRequest(_Lenient):
    model: str | None = Field(None, description="Default: the served reranker.")
    query: Text
    documents: Annotated[
        list[Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | RerankDocument],
        Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS),
    ]
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="Return the best n; default: all.")
    return_documents: bool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("rerank"))
    model: str
    method: RerankMethod = Field(description="What ranked: a cross-encoder, or the bi-encoder's cosine similarity.")
    results: list[RerankResult] = Field(description="Best first.")
    usage: RerankUsage


# ---------------------------------------------------------------- models


class ModelCard(ModelCardBase):
    capabilities: list[Capability]
    dimension: int | None = Field(None, description="Dense embedding size; sparse models: the vocabulary size.")
    max_input_tokens: int
    truncation: str = Field(description="What happens to longer inputs.")
    rerank_method: RerankMethod | None = None
    max_inputs_per_request: int | None = Field(None, description="Inputs one embeddings request may carry.")
    max_documents_per_request: int | None = Field(None, description="Documents one rerank request may carry.")
    device: str | None = None
    dtype: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
