"""Wire models every service shares: the `/v1/models` card (OpenAI's model object) and the error body."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelCardBase(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "inferag"
    root: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The one error body of every service: `{"error": {message, type, param, code}}` (OpenAI's)."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field, parameter or the JSON itself.",
    401: "Missing or invalid API key (when keys are configured).",
    403: "The key may not use this collection, or is read-only.",
    404: "Unknown model, collection, document or job.",
    409: "Conflicts with the current state.",
    413: "The request body is over the service's limit.",
    415: "Unsupported file type.",
    429: "Rate limited or over capacity; see Retry-After.",
    503: "Models still loading, shutting down, or a dependency is down.",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error body; `descriptions` override by `e404=...`."""
    return {
        code: {"model": ErrorResponse, "description": descriptions.get(f"e{code}", _ERROR_DESCRIPTIONS[code])}
        for code in sorted(set(codes))
    }


def sse_response_doc(description: str) -> dict[str, Any]:
    """The `text/event-stream` content of a 200 that streams (`stream: true`).

    OpenAPI 3.1 has the schema of an event stream describe one event: `data` is JSON, or `[DONE]` last.
    """
    data = {"type": "string", "description": "One JSON object, or [DONE] where the stream ends with it."}
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"}},
                }
            }
        },
    }
