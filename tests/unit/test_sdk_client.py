"""SDK plumbing without a server: retry delays honour Retry-After, errors map by status, SSE decoding.

The same calls against the real stack are in tests/e2e/test_sdk.py; these only pin what a live
server cannot show deterministically (the exact delays slept).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from inferag_client import (
    AsyncInferagClient,
    BadRequest,
    Conflict,
    ConnectionFailed,
    DeltaEvent,
    DoneEvent,
    InferagClient,
    NotFound,
    RateLimited,
    RetrievalEvent,
    UnknownEvent,
)

BUSY = {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "overloaded"}}


def flaky(failures: int, retry_after: str | None = "2") -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= failures:
            headers = {"Retry-After": retry_after} if retry_after else {}
            return httpx.Response(429, json=BUSY, headers=headers)
        return httpx.Response(200, json={"object": "list", "data": [], "timings": {"total": 0.1}})

    return httpx.MockTransport(handle), seen


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("inferag_client._client.time.sleep", slept.append)
    transport, seen = flaky(2)
    client = InferagClient("http://stack", transport=transport)
    assert client.retrieve("q", collection="c").data == []
    assert len(seen) == 3 and slept == [2.0, 2.0]


def test_exponential_backoff_without_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("inferag_client._client.time.sleep", slept.append)
    transport, _ = flaky(3, retry_after=None)
    InferagClient("http://stack", transport=transport, backoff=1.0).retrieve("q", collection="c")
    assert len(slept) == 3
    for attempt, delay in enumerate(slept):
        assert 0.75 * 2**attempt <= delay <= 1.25 * 2**attempt


def test_gives_up_after_max_retries_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inferag_client._client.time.sleep", lambda _: None)
    transport, seen = flaky(10)
    with pytest.raises(RateLimited) as info:
        InferagClient("http://stack", transport=transport, max_retries=2).retrieve("q", collection="c")
    assert len(seen) == 3 and info.value.retry_after == 2.0 and info.value.code == "overloaded"
    assert info.value.body == BUSY


def test_ingest_is_never_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inferag_client._client.time.sleep", lambda _: None)
    transport, seen = flaky(1)
    with pytest.raises(RateLimited):
        InferagClient("http://stack", transport=transport).documents.ingest("c", ["text"])
    assert len(seen) == 1


def test_async_twin_retries_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr("inferag_client._async_client.asyncio.sleep", fake_sleep)
    seen = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal seen
        seen += 1
        if seen == 1:
            return httpx.Response(429, json=BUSY, headers={"Retry-After": "3"})
        return httpx.Response(200, json={"object": "list", "data": [], "timings": {}})

    async def run() -> None:
        async with AsyncInferagClient("http://stack", transport=httpx.MockTransport(handle)) as client:
            assert (await client.retrieve("q", collection="c")).data == []

    asyncio.run(run())
    assert slept == [3.0]


def test_errors_by_status_and_api_key() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-test"
        status = {"/rag/collections/missing": 404, "/rag/collections": 409}.get(request.url.path, 400)
        return httpx.Response(status, json={"error": {"message": "m", "type": "t", "param": "p", "code": "c"}})

    client = InferagClient("http://stack", api_key="sk-test", transport=httpx.MockTransport(handle))
    with pytest.raises(NotFound) as info:
        client.collections.get("missing")
    assert info.value.status == 404 and info.value.param == "p"
    with pytest.raises(Conflict):
        client.collections.create("dup")
    with pytest.raises(BadRequest):
        client.chunk("x")


def test_key_and_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAG_BASE_URL", "http://env-host:9/")
    monkeypatch.setenv("INFERAG_API_KEY", "sk-env")
    client = InferagClient()
    assert client.base_url == "http://env-host:9" and client.api_key == "sk-env"
    assert client.openai_options() == {"base_url": "http://env-host:9/v1", "api_key": "sk-env"}


def test_sse_decoding_keeps_order_and_types() -> None:
    events = [
        ("retrieval", {"type": "retrieval", "query": "q", "sources": []}),
        ("delta", {"type": "delta", "text": "Hel"}),
        ("delta", {"type": "delta", "text": "lo"}),
        ("future_kind", {"type": "future_kind", "x": 1}),
        ("done", {"type": "done", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                  "total_tokens": 5}, "timings": {"total": 1.5}, "finish_reason": "stop"}),  # fmt: skip
    ]
    text = "".join(f"event: {name}\ndata: {json.dumps(body)}\n\n" for name, body in events)
    stream = httpx.MockTransport(
        lambda request: httpx.Response(200, text=text, headers={"Content-Type": "text/event-stream"})
    )
    with InferagClient("http://stack", transport=stream) as client:
        parsed = list(client.query_stream("q", collection="c"))
    kinds = [type(e) for e in parsed]
    assert kinds == [RetrievalEvent, DeltaEvent, DeltaEvent, UnknownEvent, DoneEvent]
    assert isinstance(parsed[-1], DoneEvent) and parsed[-1].timings == {"total": 1.5}


def test_a_stream_refused_before_it_started_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 429 before the first byte generated nothing: the stream is asked again (after Retry-After), as the
    # OpenAI client did for the CLI's chat; once started, a stream is never repeated.
    slept: list[float] = []
    monkeypatch.setattr("inferag_client._client.time.sleep", slept.append)
    done = {"type": "done", "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "timings": {}, "finish_reason": "stop"}  # fmt: skip
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(429, json=BUSY, headers={"Retry-After": "2"})
        return httpx.Response(200, text=f"event: done\ndata: {json.dumps(done)}\n\n",
                              headers={"Content-Type": "text/event-stream"})  # fmt: skip

    with InferagClient("http://stack", transport=httpx.MockTransport(handle)) as client:
        assert [type(e) for e in client.query_stream("q", collection="c")] == [DoneEvent]
    assert len(seen) == 2 and slept == [2.0]
    with InferagClient("http://stack", transport=httpx.MockTransport(handle), max_retries=0) as client:
        seen.clear()
        with pytest.raises(RateLimited):
            client.query_stream("q", collection="c")


def test_a_body_that_is_not_an_event_stream_is_a_typed_error() -> None:
    page = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>proxy</html>",
                                                              headers={"Content-Type": "text/html"}))  # fmt: skip
    with InferagClient("http://stack", transport=page) as client, pytest.raises(ConnectionFailed):
        list(client.query_stream("q", collection="c"))


def test_a_misspelt_ingest_option_is_refused() -> None:
    client = InferagClient("http://stack", transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    with pytest.raises(TypeError, match="backgroud"):
        client.documents.ingest("c", ["text"], backgroud=True)  # type: ignore[call-arg]


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    # A route is written once, in _async_client.py; `python clients/unasync_clients.py` writes _client.py.
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "clients" / "unasync_clients.py"
    spec = importlib.util.spec_from_file_location("unasync_clients", script)
    assert spec is not None and spec.loader is not None
    unasync_clients = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unasync_clients)
    committed = (unasync_clients.PACKAGE / unasync_clients.TARGET).read_text(encoding="utf-8")
    assert unasync_clients.generate() == committed, "run `python clients/unasync_clients.py` and commit _client.py"
