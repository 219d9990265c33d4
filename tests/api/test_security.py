"""Keys, scopes, rate limits and CORS across every route of the in-process stack."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from starlette.routing import Mount, Route

from services.gateway.app import Gateway
from tests.rag_stack import rag_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "admin-key-0123456789"
TEAM_A = "team-a-key-0123456789"  # reads and writes collection "a" only
READER = "reader-key-0123456789"  # reads "a" only
KEYS = [
    {"name": "team-a", "key": TEAM_A, "collections": ["a"]},
    {"name": "reader", "key": READER, "collections": ["a"], "write": False},
]
OPEN = {"/health", "/ready", "/", "/playground"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tiny_model_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    common = {"api_keys": KEYS, "cors_origins": ["https://app.example"]}
    async with rag_stack(tiny_model_dir, api_key=ADMIN, common=common) as (client, gateway):
        client.headers.pop("Authorization")
        for name in ("a", "b"):
            body = {"documents": [{"id": "d1", "text": f"Collection {name} holds this text."}]}
            resp = await client.post(f"/rag/collections/{name}/documents", json=body, headers=bearer(ADMIN))
            assert resp.status_code == 200, resp.text
        yield client, gateway


def every_route(gateway: Gateway) -> list[tuple[str, str]]:
    """(method, path with its parameters filled) of every path mounted by every service behind the
    gateway: API routes, the documentation (/docs, /redoc, /openapi.json) and anything else."""
    apps: list[FastAPI] = [gateway.front, *(a for a in gateway.services.values() if isinstance(a, FastAPI))]
    routes = set()
    for app in apps:
        for route in app.routes:
            assert isinstance(route, (Route, Mount)), route  # a kind this test does not know how to call
            path = re.sub(r"\{name\}", "b", route.path)
            path = re.sub(r"\{[a-z_]+(:path)?\}", "x", path)
            methods = getattr(route, "methods", None) or {"GET"}
            routes.update((m, path) for m in methods if m != "HEAD")
    return sorted(routes)


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body: dict[str, Any] | None = {} if method == "POST" else None
    return await client.request(method, path, json=body, headers=headers)


async def test_every_route_needs_a_valid_key(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, gateway = secured
    routes = every_route(gateway)
    assert len(routes) > 20
    assert {("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")} <= set(routes)
    for method, path in routes:
        for headers in ({}, bearer("wrong-key"), {"Authorization": ADMIN}):
            resp = await call(client, method, path, headers)
            if path in OPEN:
                assert resp.status_code != 401, (method, path)
                continue
            assert resp.status_code == 401, (method, path, resp.text)
            error = resp.json()["error"]
            assert error["type"] == "authentication_error" and ADMIN not in resp.text


class CountedBody:
    """A chunked request body of `total` bytes that counts how much of it the server pulled."""

    def __init__(self, total: int, chunk: bytes = b" " * 65536):
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += len(self.chunk)
            yield self.chunk


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/embeddings", "/rag/query", "/rag/collections/a/documents"]
)
async def test_no_body_is_read_without_a_key(secured: tuple[httpx.AsyncClient, Gateway], path: str) -> None:
    """The gateway read a whole chat body (to route rag: models) before any key check: memory for the taking."""
    client, _ = secured
    body = CountedBody(64 * 1024 * 1024)
    resp = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
    assert body.sent <= len(body.chunk), f"{body.sent} bytes read before the key was checked"


async def test_chat_bodies_are_bounded_before_they_are_held(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, gateway = secured
    limit = gateway.settings.max_body_bytes
    body = CountedBody(limit + 4 * 1024 * 1024)
    headers = {**bearer(ADMIN), "Content-Type": "application/json"}
    resp = await client.post("/v1/chat/completions", content=body, headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large", resp.text
    assert body.sent <= limit + len(body.chunk), "read past the limit"
    declared = CountedBody(1024)
    resp = await client.post("/v1/chat", content=declared, headers={**headers, "Content-Length": str(limit + 1)})
    assert resp.status_code == 413 and declared.sent == 0
    # a route whose body FastAPI parses: its "error parsing the body" 400 was the answer to the limit's 413
    body = CountedBody(limit + 4 * 1024 * 1024)
    resp = await client.post("/v1/embeddings", content=body, headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large", resp.text
    assert body.sent <= limit + len(body.chunk), "read past the limit"


async def test_common_settings_reach_every_in_process_service() -> None:
    from services.gateway.settings import GatewaySettings

    given = GatewaySettings(max_body_bytes=4096, api_key="k" * 16, port=9000, host="0.0.0.0")
    assert set(given.shared()) == {"max_body_bytes", "api_key"}  # where to listen stays the gateway's


async def test_scoped_key_reaches_only_its_collections(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, gateway = secured
    listed = (await client.get("/rag/collections", headers=bearer(TEAM_A))).json()["data"]
    assert [c["name"] for c in listed] == ["a"]
    models = {m["id"] for m in (await client.get("/v1/models", headers=bearer(TEAM_A))).json()["data"]}
    assert "rag:a" in models and "rag:b" not in models
    # every route naming collection "b" is 403 for team-a
    b_routes = [(m, p) for m, p in every_route(gateway) if "/collections/b" in p]
    assert len(b_routes) >= 5
    for method, path in b_routes:
        resp = await call(client, method, path, bearer(TEAM_A))
        assert resp.status_code == 403, (method, path, resp.text)
        assert resp.json()["error"]["type"] == "permission_error"
    for path, body in [
        ("/rag/retrieve", {"collection": "b", "query": "text"}),
        ("/rag/query", {"collections": ["a", "b"], "query": "text"}),
        ("/rag/agent", {"collection": "b", "query": "text"}),
        ("/v1/chat/completions", {"model": "rag:b", "messages": [{"role": "user", "content": "x"}]}),
    ]:
        resp = await client.post(path, json=body, headers=bearer(TEAM_A))
        assert resp.status_code == 403, (path, resp.text)
    ok = await client.post("/rag/retrieve", json={"collection": "a", "query": "text"}, headers=bearer(TEAM_A))
    assert ok.status_code == 200 and ok.json()["data"][0]["collection"] == "a"
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert (await client.post("/v1/chat/completions", json=chat, headers=bearer(TEAM_A))).status_code == 200


async def test_read_only_key_cannot_write(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, _ = secured
    body = {"documents": [{"text": "new"}]}
    resp = await client.post("/rag/collections/a/documents", json=body, headers=bearer(READER))
    assert resp.status_code == 403 and "may not write" in resp.json()["error"]["message"]
    assert (await client.delete("/rag/collections/a/documents/d1", headers=bearer(READER))).status_code == 403
    assert (await client.get("/rag/collections/a/documents/d1", headers=bearer(READER))).status_code == 200


async def test_a_foreign_job_looks_missing_to_a_scoped_key(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, _ = secured
    body = {"documents": [{"id": "j", "text": "Queued as a job."}], "background": True}
    resp = await client.post("/rag/collections/b/documents", json=body, headers=bearer(ADMIN))
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert (await client.get(f"/rag/jobs/{job_id}", headers=bearer(ADMIN))).status_code == 200
    foreign = await client.get(f"/rag/jobs/{job_id}", headers=bearer(TEAM_A))
    missing = await client.get("/rag/jobs/job-does-not-exist", headers=bearer(TEAM_A))
    # the same answer: team-a learns nothing about the jobs of collections outside its scope
    assert foreign.status_code == missing.status_code == 404, (foreign.text, missing.text)
    assert foreign.json() == json.loads(missing.text.replace("job-does-not-exist", job_id))
    assert job_id not in {j["id"] for j in (await client.get("/rag/jobs", headers=bearer(TEAM_A))).json()["data"]}


async def test_cors_allows_only_configured_origins(secured: tuple[httpx.AsyncClient, Gateway]) -> None:
    client, _ = secured
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    good = await client.options("/rag/query", headers={"Origin": "https://app.example", **preflight})
    assert good.headers.get("access-control-allow-origin") == "https://app.example"
    bad = await client.options("/rag/query", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in bad.headers


async def test_rate_limit_and_closed_cors_by_default(tiny_model_dir: Path) -> None:
    async with rag_stack(tiny_model_dir, common={"rate_limit_rps": 0.5, "rate_limit_burst": 3}) as (client, _):
        statuses = [(await client.get("/rag/collections")).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        resp = await client.get("/rag/collections")
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        assert json.loads(resp.text)["error"]["type"] == "rate_limit_error"
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
        options = await client.options("/rag/collections", headers=preflight)
        assert "access-control-allow-origin" not in options.headers
