"""The started generation service on the transformers engine, driven with the official openai SDK."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.openai_sdk_checks import QUESTION, check_async, check_sync

pytestmark = pytest.mark.slow


def metric(base: str, name: str, labels: str = "") -> float:
    text = httpx.get(base + "/metrics").text
    pattern = (
        rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$" if labels else rf"^{re.escape(name)} ([0-9.e+-]+)$"
    )
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_openai_sdk_sync(transformers_server: str) -> None:
    check_sync(transformers_server, MODEL)


def test_openai_sdk_async(transformers_server: str) -> None:
    check_async(transformers_server, MODEL)


def test_concurrent_requests_share_batches(transformers_server: str) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=transformers_server + "/v1", api_key="unused")
        await asyncio.gather(
            *[
                client.chat.completions.create(
                    model=MODEL, messages=QUESTION, max_tokens=24, temperature=0,  # type: ignore[arg-type]
                    extra_body={"ignore_eos": True},
                )
                for _ in range(8)
            ]
        )  # fmt: skip
        await client.close()

    asyncio.run(run())
    text = httpx.get(transformers_server + "/metrics").text
    sizes = {
        int(s): float(v)
        for s, v in re.findall(r'inferag_generation_decode_steps_total\{batch_size="(\d+)"\} (\S+)', text)
    }
    shown = str(sorted(sizes.items()))
    assert max(sizes) >= 4, shown
    # most decode steps of that burst ran with several sequences in the batch
    assert sum(v for s, v in sizes.items() if s >= 4) >= 20, shown


def test_overload_answers_429_with_retry_after(tiny_server: str) -> None:
    body = {
        "model": "tiny", "messages": QUESTION, "max_tokens": 400, "ignore_eos": True, "stream": True,
    }  # fmt: skip
    with httpx.Client(base_url=tiny_server, timeout=60) as client:
        with (
            client.stream("POST", "/v1/chat/completions", json=body) as s1,
            client.stream("POST", "/v1/chat/completions", json=body) as s2,
        ):
            assert s1.status_code == s2.status_code == 200
            for stream in (False, True):  # a stream is refused with a status too, not an error event
                r = client.post("/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == 429, r.text
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
        # both streams were dropped by leaving the block: capacity comes back
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = client.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_engine_request(tiny_server: str, stream: bool) -> None:
    aborted_before = metric(tiny_server, "inferag_generation_requests_total", '{endpoint="chat",outcome="aborted"}')
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True, "stream": stream}
    with httpx.Client(base_url=tiny_server, timeout=60) as client:
        if stream:
            with client.stream("POST", "/v1/chat/completions", json=body) as s:
                lines = s.iter_lines()
                for _ in range(5):
                    next(lines)
        else:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = metric(tiny_server, "inferag_generation_requests_running")
        aborted = metric(tiny_server, "inferag_generation_requests_total", '{endpoint="chat",outcome="aborted"}')
        if running == 0 and aborted == aborted_before + 1:
            break
        time.sleep(0.1)
    assert running == 0
    assert aborted == aborted_before + 1
