"""Request ids: one id follows a request through every service and every log line it causes.

`RequestIdMiddleware` takes `X-Request-Id` from the request (or makes one), keeps it in a
contextvar for the request's lifetime, echoes it in the response, and logs one access line.
HTTP clients between services pass it on with `request_id_headers()` or the httpx event
hook `propagate_request_id`, so the gateway, RAG, embeddings and generation logs of one
user request share the same `request_id`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

import httpx
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http import ResponseWatch

HEADER = "X-Request-Id"
_HEADER_KEY = HEADER.lower().encode()
# What we accept from a caller: anything else (too long, spaces, quotes, newlines) could forge
# log lines or carry a secret into the logs, so it is replaced by a fresh id.
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes arrive every few seconds; their access lines stay at debug.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})

_current: ContextVar[str | None] = ContextVar("inferag_request_id", default=None)
access_log = logging.getLogger("inferag.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return _current.get()


def request_id_headers() -> dict[str, str]:
    """`{"X-Request-Id": id}` for calls made while serving a request; `{}` outside one."""
    rid = _current.get()
    return {HEADER: rid} if rid else {}


async def propagate_request_id(request: httpx.Request) -> None:
    """httpx event hook: `httpx.AsyncClient(event_hooks={"request": [propagate_request_id]})`.

    Keeps an id the caller set explicitly.
    """
    rid = _current.get()
    if rid and HEADER not in request.headers:
        request.headers[HEADER] = rid


def _incoming_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            text = value.decode("latin-1")
            return text if _VALID.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streaming responses and disconnects pass through.

    Install it outermost, so the id is set before any other middleware logs.
    """

    def __init__(self, app: ASGIApp, service: str = "inferag") -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope)
        if rid is None:
            rid = new_request_id()
            # Put it on the request too, so apps and proxies behind this one (the gateway's) keep it.
            headers = [(k, v) for k, v in scope.get("headers", ()) if k != _HEADER_KEY]
            scope = {**scope, "headers": [*headers, (_HEADER_KEY, rid.encode())]}
        token = _current.set(rid)
        start = time.perf_counter()

        def started(message: Message) -> None:
            MutableHeaders(scope=message)[HEADER] = rid

        watch = ResponseWatch(send, started)
        try:
            await self.app(scope, receive, watch.send)
        finally:
            status = watch.status
            path = scope.get("path", "")
            # The path only: a query string may carry a key (`?api_key=`), headers never go in.
            access_log.log(
                logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                "%s %s %s %d",  # the service first: behind the one-command gateway both log the request
                self.service,
                scope.get("method", ""),
                path,
                status,
                extra={
                    "service": self.service,
                    "method": scope.get("method", ""),
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                },
            )
            _current.reset(token)
