"""Python SDK of the inferag stack: `InferagClient` (sync) and `AsyncInferagClient` over httpx.

    from inferag_client import InferagClient
    with InferagClient() as client:            # INFERAG_BASE_URL / INFERAG_API_KEY from the environment
        client.documents.ingest("notes", ["Qdrant stores the vectors."])
        print(client.query("Where are vectors stored?", collection="notes").answer)

Chat and embeddings are the OpenAI API: use the official `openai` package
(`openai.OpenAI(**client.openai_options())`).
"""

from ._async_client import AsyncInferagClient, AsyncStream
from ._client import InferagClient, Stream
from .errors import (
    AuthenticationError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    InferagError,
    InternalServerError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from .events import (
    AgentCitationsEvent,
    AgentDeltaEvent,
    AgentDoneEvent,
    AgentErrorEvent,
    AgentEvent,
    AgentStreamEvent,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    QueryEvent,
    QueryStreamEvent,
    RetrievalEvent,
    ThoughtEvent,
    ToolCallEvent,
    ToolResultEvent,
    UnknownEvent,
)

__all__ = [
    "AgentCitationsEvent",
    "AgentDeltaEvent",
    "AgentDoneEvent",
    "AgentErrorEvent",
    "AgentEvent",
    "AgentStreamEvent",
    "AsyncInferagClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequest",
    "CitationsEvent",
    "Conflict",
    "ConnectionFailed",
    "DeltaEvent",
    "DoneEvent",
    "ErrorEvent",
    "InferagClient",
    "InferagError",
    "InternalServerError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QueryEvent",
    "QueryStreamEvent",
    "RateLimited",
    "RetrievalEvent",
    "ServiceUnavailable",
    "Stream",
    "ThoughtEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "UnknownEvent",
    "UnsupportedMediaType",
]
