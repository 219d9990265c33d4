"""Response and request types of the SDK.

The wire models are the services' own (`inferag_protocol`, which both sides import), re-exported here so
the client and the server can never disagree; only the few answers that have no wire model in the
services (the ops routes and the model list) are declared here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from inferag_protocol.agent import AgentResponse, Step
from inferag_protocol.perplexity import PerplexityData, PerplexityResponse
from inferag_protocol.rag import (
    Chunk,
    ChunkResponse,
    Citation,
    CollectionInfo,
    CollectionList,
    Deleted,
    DocumentDetail,
    DocumentIn,
    DocumentInfo,
    DocumentList,
    Hit,
    IngestResult,
    Job,
    JobError,
    JobList,
    Message,
    QueryResponse,
    RerankResponse,
    RerankResult,
    RetrieveResponse,
    StoredChunk,
    Usage,
)

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
