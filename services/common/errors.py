"""Domain errors and the one place that turns them into OpenAI error bodies.

Engines and pipelines raise these; only the app (through `install_error_handlers`)
maps them to HTTP. The body is always `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class InferagError(Exception):
    """Base of every error the services raise on purpose."""

    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(InferagError):
    status_code = 400
    type = "invalid_request_error"


class Unauthorized(InferagError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(InferagError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(InferagError):
    status_code = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, available: list[str] | None = None):
        hint = f" Available: {', '.join(available)}." if available else ""
        super().__init__(f"The model '{model}' does not exist.{hint}", param="model")


class Conflict(InferagError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(InferagError):
    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(InferagError):
    status_code = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Overloaded(InferagError):
    status_code = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class NotReady(InferagError):
    status_code = 503
    type = "service_unavailable"
    code = "not_ready"


class UpstreamUnavailable(NotReady):
    code = "upstream_unavailable"


class EngineError(InferagError):
    status_code = 500
    type = "internal_error"
    code = "engine_error"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# A stream that fails after its first byte ends with an error event (an OpenAI error body, no status): the
# status it stands for, when a relay must answer with one.
_EVENT_STATUS = {"invalid_request_error": 400, "rate_limit_error": 429}


def status_of_error_event(error: Mapping[str, Any]) -> int:
    return _EVENT_STATUS.get(str(error.get("type")), 500)


def error_for(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to (status, OpenAI error body, headers)."""
    if isinstance(exc, InferagError):
        return exc.status_code, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers()
    if isinstance(exc, RequestValidationError):
        return 400, _validation_body(exc), {}
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__cause__, InferagError):
        # FastAPI answers any failure while it reads a body as a 400 "error parsing the body"; a refusal
        # raised by that read (the body limit's 413) is the answer.
        return error_for(exc.__cause__)
    if isinstance(exc, StarletteHTTPException):
        type_ = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        return exc.status_code, error_body(str(exc.detail), type_), dict(exc.headers or {})
    log.exception("unhandled error", exc_info=exc)
    return 500, error_body("Internal server error.", "internal_error"), {}


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = exc.errors()
    if not errors:
        return error_body("Invalid request.", "invalid_request_error")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return error_body("The request body is not valid JSON.", "invalid_request_error", None, "invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "Invalid value")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_body(message, "invalid_request_error", param, "invalid_value")


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = error_for(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error(exc: BaseException) -> str:
    """An error as one SSE event, for failures after a stream has started."""
    _, body, _ = error_for(exc)
    return f"data: {json.dumps(body)}\n\n"


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    app.add_exception_handler(InferagError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)
