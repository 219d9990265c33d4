"""Typed exceptions for the stack's error bodies (`{"error": {message, type, param, code}}`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inferag_protocol.common import parse_retry_after


class InferagError(Exception):
    """An error answer of the stack: its HTTP status and the OpenAI error body it sent."""

    status: int = 0

    def __init__(self, status: int, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None):
        self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})
        error = self.body.get("error")
        error = error if isinstance(error, dict) else {}
        self.message: str = str(error.get("message") or f"HTTP {status}")
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")
        self.code: str | None = error.get("code")
        super().__init__(f"{status} {self.type or 'error'}: {self.message}")


class BadRequest(InferagError):
    """400: the request was invalid."""


class AuthenticationError(InferagError):
    """401: missing or wrong API key."""


class PermissionDenied(InferagError):
    """403."""


class NotFound(InferagError):
    """404: no such collection, document, job or model."""


class Conflict(InferagError):
    """409: e.g. the collection already exists."""


class PayloadTooLarge(InferagError):
    """413."""


class UnsupportedMediaType(InferagError):
    """415: e.g. a file type the ingestion does not read."""


class RateLimited(InferagError):
    """429: the stack is at capacity; `retry_after` is the delay it asked for, in seconds."""

    def __init__(self, status: int, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(status, body, headers)
        self.retry_after: float | None = parse_retry_after(self.headers)


class ServiceUnavailable(InferagError):
    """503: not ready yet, or an upstream is down."""

    def __init__(self, status: int, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(status, body, headers)
        self.retry_after: float | None = parse_retry_after(self.headers)


class InternalServerError(InferagError):
    """5xx other than 503."""


class ConnectionFailed(InferagError):
    """The stack could not be reached (no HTTP answer); `status` is 0."""

    def __init__(self, message: str):
        super().__init__(0, {"error": {"message": message, "type": "connection_error", "param": None, "code": None}})


BY_STATUS: dict[int, type[InferagError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: BadRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}

# An `error` event of a stream carries no status; its code or type tells which one it would have been.
_STATUS_BY_CODE = {"conflict": 409, "payload_too_large": 413, "unsupported_media_type": 415}
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "service_unavailable": 503,
}


def error_for_status(
    status: int, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
) -> InferagError:
    """The exception for an error answer: its class is chosen by the status."""
    cls = BY_STATUS.get(status) or (InternalServerError if status >= 500 else InferagError)
    return cls(status, body, headers)


def error_for_body(body: Mapping[str, Any]) -> InferagError:
    """The exception for an error that came inside a stream (no HTTP status)."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(error, dict)
    status = _STATUS_BY_CODE.get(str(error.get("code")), 0) or _STATUS_BY_TYPE.get(str(error.get("type")), 500)
    return error_for_status(status, body)
