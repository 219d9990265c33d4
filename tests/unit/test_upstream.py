"""Calls between services: 429/503 retried with backoff and Retry-After, bounded; generation only when
nothing had started (httpx's mock transport stands in for the upstream; the real stack's case is in
tests/api/test_rag_api.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from inferag_protocol.common import parse_retry_after
from services.common.errors import InvalidRequest, Overloaded, UpstreamUnavailable
from services.common.upstream import Retry
from services.embeddings.client import HttpEmbeddings
from services.generation.protocol import ChatCompletionRequest
from services.rag.generator import HttpGenerator

FAST = Retry(attempts=3, backoff_s=0.01, max_wait_s=2)
MODELS = {"data": [{"id": "emb", "capabilities": ["embeddings"], "dimension": 2, "max_input_tokens": 8}]}
EMBEDDING = {"data": [{"index": 0, "embedding": "AACAPwAAAEA="}]}  # base64 of float32 [1.0, 2.0]
CHAT = {
    "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
ASK = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def upstream(answers: list[httpx.Response | type[Exception]]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose upstream gives `answers` in turn (an exception class: that transport failure)."""
    seen: list[httpx.Request] = []
    given = iter(answers)
    last = answers[-1]

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal last
        seen.append(request)
        answer = last = next(given, last)
        if isinstance(answer, type):
            raise answer("upstream failure", request=request)
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://up"), seen


def error(status: int, **headers: str) -> httpx.Response:
    body = {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "overloaded"}}
    return httpx.Response(status, json=body, headers=headers)


async def embeddings(answers: list[httpx.Response | type[Exception]], retry: Retry = FAST) -> tuple[
    Callable[[], object], list[httpx.Request]
]:
    client, seen = upstream([httpx.Response(200, json=MODELS), *answers])
    emb = await HttpEmbeddings.connect("http://up", client=client, retry=retry)
    seen.clear()
    return (lambda: emb.embed(["a"])), seen


@pytest.mark.asyncio
async def test_embeddings_retry_a_429_as_its_retry_after_asks() -> None:
    embed, seen = await embeddings([error(429, **{"Retry-After": "0"}), httpx.Response(200, json=EMBEDDING)])
    assert await embed() == [[1.0, 2.0]]
    assert len(seen) == 2


@pytest.mark.parametrize("failure", [error(503), httpx.ReadTimeout, httpx.ConnectError])
@pytest.mark.asyncio
async def test_embeddings_give_up_after_the_bounded_tries(failure: httpx.Response | type[Exception]) -> None:
    embed, seen = await embeddings([failure])
    with pytest.raises(UpstreamUnavailable):
        await embed()
    assert len(seen) == FAST.attempts


@pytest.mark.asyncio
async def test_no_retry_when_the_upstream_asks_for_longer_or_the_request_is_bad() -> None:
    embed, seen = await embeddings([error(429, **{"Retry-After": "30"})])
    with pytest.raises(Overloaded) as info:
        await embed()
    assert len(seen) == 1 and info.value.retry_after == 30
    embed, seen = await embeddings([httpx.Response(400, json={"error": {"message": "bad", "type": "x"}})])
    with pytest.raises(InvalidRequest):
        await embed()
    assert len(seen) == 1


@pytest.mark.asyncio
async def test_generation_is_retried_only_when_it_had_not_started() -> None:
    client, seen = upstream([error(429, **{"Retry-After": "0"}), httpx.Response(200, json=CHAT)])
    assert (await HttpGenerator(client, FAST).chat(ASK)).choices
    assert len(seen) == 2
    # sent, then cut: the service may be generating it; not sent again
    client, seen = upstream([httpx.ReadTimeout, httpx.Response(200, json=CHAT)])
    with pytest.raises(UpstreamUnavailable):
        await HttpGenerator(client, FAST).chat(ASK)
    assert len(seen) == 1
    # never connected: safe to send
    client, seen = upstream([httpx.ConnectError, httpx.Response(200, json=CHAT)])
    assert (await HttpGenerator(client, FAST).chat(ASK)).choices
    assert len(seen) == 2


@pytest.mark.asyncio
async def test_a_stream_refused_before_its_first_chunk_is_retried() -> None:
    chunk = {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    stream = httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})
    client, seen = upstream([error(503, **{"Retry-After": "0"}), stream])
    got = [c async for c in HttpGenerator(client, FAST).chat_stream(ASK)]
    assert [c.model_dump(exclude_defaults=True) for c in got] == [chunk] and len(seen) == 2


def test_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    asked = parse_retry_after({"retry-after": later})
    assert asked is not None and 15 < asked <= 20
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_delays_grow_and_stay_bounded() -> None:
    policy = Retry(attempts=5, backoff_s=1, max_wait_s=3)
    assert all(0 <= (policy.delay(1) or 0) <= 1 for _ in range(50))
    assert all(2 <= (policy.delay(2, 2) or 0) <= 3 for _ in range(50))
    assert policy.delay(5) is None and policy.delay(1, 4) is None
