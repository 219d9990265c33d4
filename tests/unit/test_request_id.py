"""X-Request-Id: taken or made, echoed, stamped on every log line, passed on to other services."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry

from services.common.logging import redact, setup_logging
from services.common.request_id import (
    HEADER,
    RequestIdMiddleware,
    current_request_id,
    propagate_request_id,
    request_id_headers,
)
from services.common.service import build_service_app
from services.common.settings import CommonSettings

log = logging.getLogger("tests.request_id")
asyncio = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The real `setup_logging(json_lines=True)`, writing to a buffer; root handlers restored after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    setup_logging("debug", json_lines=True)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def downstream_app() -> FastAPI:
    """Stands for another service: reports the id it was called with."""
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware, service="downstream")

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, str | None]:
        log.info("downstream work")
        return {"header": request.headers.get(HEADER), "current": current_request_id()}

    return app


def upstream_app() -> FastAPI:
    """Stands for the RAG service: calls the downstream one, once per propagation helper."""
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware, service="upstream")
    down = downstream_app()

    @app.get("/call")
    async def call() -> dict[str, object]:
        log.info("upstream work Authorization: Bearer sk-secret-123")
        transport = httpx.ASGITransport(app=down)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://down", event_hooks={"request": [propagate_request_id]}
        ) as client:
            hooked = (await client.get("/echo")).json()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://down") as client:
            explicit = (await client.get("/echo", headers=request_id_headers())).json()
        return {"hooked": hooked, "explicit": explicit, "mine": current_request_id()}

    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@asyncio
async def test_incoming_id_is_echoed_propagated_and_logged(json_logs: io.StringIO) -> None:
    async with client_for(upstream_app()) as client:
        response = await client.get("/call", headers={HEADER: "req-abc.123", "Authorization": "Bearer sk-secret-123"})
    assert response.status_code == 200
    assert response.headers[HEADER] == "req-abc.123"
    body = response.json()
    assert body["mine"] == "req-abc.123"
    assert body["hooked"] == {"header": "req-abc.123", "current": "req-abc.123"}
    assert body["explicit"] == {"header": "req-abc.123", "current": "req-abc.123"}

    records = lines(json_logs)
    work = [r for r in records if str(r["msg"]).endswith("work") or "work " in str(r["msg"])]
    assert {r["request_id"] for r in work} == {"req-abc.123"}
    assert len(work) == 3  # upstream once, downstream twice
    access = [r for r in records if r["logger"] == "inferag.access"]
    assert {(r["service"], r["path"], r["status"]) for r in access} == {
        ("downstream", "/echo", 200),
        ("upstream", "/call", 200),
    }
    assert all(r["request_id"] == "req-abc.123" and r["duration_ms"] >= 0 for r in access)
    assert {r["msg"] for r in access} == {"downstream GET /echo 200", "upstream GET /call 200"}  # text logs too
    assert "sk-secret-123" not in json_logs.getvalue()


@asyncio
async def test_missing_or_unsafe_id_is_replaced_by_a_new_one(json_logs: io.StringIO) -> None:
    async with client_for(downstream_app()) as client:
        fresh = await client.get("/echo")
        forged = await client.get("/echo", headers={HEADER: 'x" injected\tline'})
        other = await client.get("/echo")
    for response in (fresh, forged, other):
        rid = response.headers[HEADER]
        assert len(rid) == 32 and int(rid, 16) >= 0
        # the app behind sees the id it is given (apps and proxies behind a gateway keep the same one)
        assert response.json() == {"header": rid, "current": rid}
    assert len({fresh.headers[HEADER], forged.headers[HEADER], other.headers[HEADER]}) == 3
    assert "injected" not in json_logs.getvalue()


@asyncio
async def test_outside_a_request_there_is_no_id() -> None:
    assert current_request_id() is None
    assert request_id_headers() == {}
    request = httpx.Request("GET", "http://x/")
    await propagate_request_id(request)
    assert HEADER not in request.headers


@asyncio
async def test_hook_keeps_an_explicit_id() -> None:
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    sent: list[str] = []

    @app.get("/")
    async def root() -> None:
        request = httpx.Request("GET", "http://x/", headers={HEADER: "chosen"})
        await propagate_request_id(request)
        sent.append(request.headers[HEADER])

    async with client_for(app) as client:
        await client.get("/", headers={HEADER: "incoming"})
    assert sent == ["chosen"]


@asyncio
async def test_service_apps_carry_the_id_on_every_route() -> None:
    """`build_service_app` installs the middleware: /health, errors and /metrics all echo the id."""

    async def load() -> object:
        return object()

    async def close(_: object) -> None:
        return None

    app = build_service_app("demo", CommonSettings(), CollectorRegistry(), load, close, APIRouter())
    async with client_for(app) as client:
        health = await client.get("/health", headers={HEADER: "probe-1"})
        missing = await client.get("/nope")
        metrics = await client.get("/metrics")
    assert health.headers[HEADER] == "probe-1"
    assert missing.status_code == 404 and len(missing.headers[HEADER]) == 32
    assert metrics.status_code == 200 and HEADER in metrics.headers


def test_streaming_response_gets_the_header_and_the_id_lasts_to_the_end() -> None:
    from fastapi.responses import StreamingResponse
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            for _ in range(3):
                yield f"{current_request_id()}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    with TestClient(app) as client:
        response = client.get("/stream", headers={HEADER: "sse-1"})
    assert response.headers[HEADER] == "sse-1"
    assert response.text.splitlines() == ["sse-1"] * 3


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer sk-abc", "sk-abc"),
        ("headers={'authorization': 'Bearer tok123'}", "tok123"),
        ("url http://q:6333?api_key=k3y&x=1", "k3y"),
        ('{"api-key": "qdrant-k"}', "qdrant-k"),
        ("QDRANT_API_KEY=zzz9 started", "zzz9"),
        ("X-Api-Key: abcd", "abcd"),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "[redacted]" in out


def test_text_logs_show_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    try:
        setup_logging("info", json_lines=False)
        log.info("outside password=hunter2")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    assert "[-]: outside password=[redacted]" in buffer.getvalue()
