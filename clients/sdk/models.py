"""Response and request types of the SDK.

The RAG wire models are the service's own (`services.rag.protocol`), re-exported here so the
client and the server can never disagree; only the few answers that have no wire model in the
services (the ops routes and the model list) are declared here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.generation.protocol import PerplexityData, PerplexityResponse
from services.rag.agent.protocol import AgentResponse, Step
from services.rag.protocol import (
    ChunkResponse,
    Citation,
    CollectionList,
    Deleted,
    DocumentDetail,
    DocumentIn,
    DocumentList,
    IngestResult,
    Job,
    JobError,
    JobList,
    Message,
    QueryResponse,
    RerankResponse,
    RerankResult,
    RetrieveResponse,
    Usage,
)
from services.rag.types import Chunk, CollectionInfo, DocumentInfo, Hit, StoredChunk

__all__ = [
    "AgentResponse",
    "PerplexityData",
    "PerplexityResponse",
    "Chunk",
    "ChunkResponse",
    "Citation",
    "CollectionInfo",
    "CollectionList",
    "Deleted",
    "DocumentDetail",
    "DocumentIn",
    "DocumentInfo",
    "DocumentList",
    "Health",
    "Hit",
    "IngestResult",
    "Job",
    "JobError",
    "JobList",
    "Message",
    "Model",
    "ModelList",
    "QueryResponse",
    "Readiness",
    "RerankResponse",
    "RerankResult",
    "RetrieveResponse",
    "Step",
    "StoredChunk",
    "Usage",
]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str


class Readiness(BaseModel):
    """`/ready`: `ready` is False (not an exception) while a service is still loading."""

    model_config = ConfigDict(extra="allow")
    status: str = "not_ready"
    services: dict[str, str] = Field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]
