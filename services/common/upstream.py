"""Calls between services: an upstream's OpenAI error body becomes the same domain error here."""

from __future__ import annotations

from typing import Any

import httpx

from .errors import (
    EngineError,
    Forbidden,
    InferagError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UpstreamUnavailable,
)

_ERRORS: dict[int, type[InferagError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    503: UpstreamUnavailable,
}


def upstream_error(status: int, body: Any, headers: httpx.Headers | dict[str, str] | None = None) -> InferagError:
    """The domain error for an upstream's error answer (`body` is its parsed JSON or text)."""
    try:
        err = body["error"]
        message, param, code = str(err["message"]), err.get("param"), err.get("code")
    except (KeyError, TypeError):
        message, param, code = (body if isinstance(body, str) and body else f"HTTP {status}"), None, None
    if status == 429:
        return Overloaded(message, retry_after=float((headers or {}).get("retry-after", 1)))
    default = InvalidRequest if status < 500 else EngineError
    return _ERRORS.get(status, default)(message, param=param, code=code)


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None, *, service: str) -> dict[str, Any]:
    """One JSON call; an error answer raises the matching domain error, an unreachable host UpstreamUnavailable."""
    try:
        resp = await client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"The {service} service at {client.base_url} is unreachable: {exc}") from exc
    if resp.status_code < 400:
        result: dict[str, Any] = resp.json()
        return result
    try:
        parsed: Any = resp.json()
    except ValueError:
        parsed = resp.text
    raise upstream_error(resp.status_code, parsed, resp.headers)
