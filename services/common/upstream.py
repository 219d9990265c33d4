"""Calls between services: an upstream's OpenAI error body becomes the same domain error here, and a
refusal that says "later" (429, 503) is retried with backoff, as its `Retry-After` asks, a bounded
number of times.

Only what cannot have run twice is repeated: every answer of 429 or 503 (the upstream refused before
doing anything), a connection that never opened, and, for idempotent calls (embeddings, listings), any
transport failure. A generation call cut after it was sent is not repeated, nor a stream once a chunk
arrived.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from inferag_protocol.common import parse_retry_after

from .errors import (
    EngineError,
    Forbidden,
    InferagError,
    InvalidRequest,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_ERRORS: dict[int, type[InferagError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    503: UpstreamUnavailable,
}
RETRY_STATUSES = frozenset({429, 503})
# The request never reached the upstream: safe to send again whatever it does.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Retry:
    """How often, and how long apart, a refused call to another service is tried again."""

    attempts: int = 4
    backoff_s: float = 0.25
    max_wait_s: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after failed try number `attempt` (from 1), or None to give up: the tries are
        spent, or the upstream asks for a longer wait than `max_wait_s`."""
        if attempt >= self.attempts or (retry_after is not None and retry_after > self.max_wait_s):
            return None
        # Jitter on top of what was asked, so callers refused together do not all come back at once.
        jitter = random.uniform(0, self.backoff_s * 2 ** (attempt - 1))
        return min(self.max_wait_s, (retry_after or 0.0) + jitter)

    async def run(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """`fn()`, tried again while it raises Overloaded (429) or NotReady (503), for in-process services."""
        attempt = 1
        while True:
            try:
                return await fn()
            except (Overloaded, NotReady) as exc:
                wait = self.delay(attempt, getattr(exc, "retry_after", None))
                if wait is None:
                    raise
                _log_retry(what, attempt, wait, exc.message)
            await asyncio.sleep(wait)
            attempt += 1


NO_RETRY = Retry(attempts=1)


def _log_retry(what: str, attempt: int, wait: float, reason: str) -> None:
    log.info("%s: %s; try %d again in %.2f s", what, reason, attempt + 1, wait)


def upstream_error(status: int, body: Any, headers: httpx.Headers | dict[str, str] | None = None) -> InferagError:
    """The domain error for an upstream's error answer (`body` is its parsed JSON or text)."""
    try:
        err = body["error"]
        message, param, code = str(err["message"]), err.get("param"), err.get("code")
    except (KeyError, TypeError):
        message, param, code = (body if isinstance(body, str) and body else f"HTTP {status}"), None, None
    if status == 429:
        asked = parse_retry_after(headers)
        return Overloaded(message, retry_after=1.0 if asked is None else asked)
    default = InvalidRequest if status < 500 else EngineError
    return _ERRORS.get(status, default)(message, param=param, code=code)


async def _error_of(resp: httpx.Response) -> InferagError:
    raw = await resp.aread()
    try:
        parsed: Any = resp.json()
    except ValueError:
        parsed = raw.decode(errors="replace")
    return upstream_error(resp.status_code, parsed, resp.headers)


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    service: str,
    retry: Retry = NO_RETRY,
    idempotent: bool = True,
) -> httpx.Response:
    """An open (streamed) successful response; an error answer raises its domain error, an unreachable
    upstream UpstreamUnavailable, after the retries `retry` allows. The caller closes the response."""
    what = f"{method} {client.base_url.join(path)}"
    attempt = 1
    while True:
        try:
            resp = await client.send(client.build_request(method, path, json=body), stream=True)
        except httpx.HTTPError as exc:
            error: InferagError = UpstreamUnavailable(
                f"The {service} service at {client.base_url} is unreachable: {exc}"
            )
            wait = retry.delay(attempt) if idempotent or isinstance(exc, _NOT_SENT) else None
            if wait is None:
                raise error from exc
        else:
            if resp.status_code < 400:
                return resp
            try:
                error = await _error_of(resp)
            finally:
                await resp.aclose()
            asked = parse_retry_after(resp.headers)
            wait = retry.delay(attempt, asked) if resp.status_code in RETRY_STATUSES else None
            if wait is None:
                raise error
        _log_retry(what, attempt, wait, error.message)
        await asyncio.sleep(wait)
        attempt += 1


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    service: str,
    retry: Retry = NO_RETRY,
    idempotent: bool = True,
) -> dict[str, Any]:
    """One JSON call (see `send` for errors and retries)."""
    resp = await send(client, method, path, body, service=service, retry=retry, idempotent=idempotent)
    try:
        await resp.aread()
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"The {service} service at {client.base_url} failed: {exc}") from exc
    finally:
        await resp.aclose()
    result: dict[str, Any] = resp.json()
    return result
