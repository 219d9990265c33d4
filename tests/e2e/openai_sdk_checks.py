"""The same checks with the official `openai` SDK for every engine: a started server is all they need."""

from __future__ import annotations

import asyncio

import openai

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def check_sync(base: str, model: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [model]

    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    text = r.choices[0].message.content or ""
    assert "paris" in text.lower(), text
    assert r.usage is not None and r.usage.completion_tokens >= 1

    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=16, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == text
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert c.choices[0].text and c.choices[0].finish_reason in {"stop", "length"}
    cs = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in cs if ch.choices) == c.choices[0].text

    try:
        client.chat.completions.create(model="nope", messages=QUESTION)  # type: ignore[arg-type]
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as exc:
        assert exc.body is not None


def check_async(base: str, model: str) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused")
        r = await client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0)  # type: ignore[arg-type]
        assert "paris" in (r.choices[0].message.content or "").lower()
        stream = await client.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == r.choices[0].message.content
        # concurrent requests all complete
        many = await asyncio.gather(
            *[
                client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0)  # type: ignore[arg-type]
                for _ in range(4)
            ]
        )
        assert all(m.choices[0].message.content for m in many)
        await client.close()

    asyncio.run(run())


def check_responses(base: str, model: str) -> str:
    """`responses.create` whole and streamed (the SDK parses every event into its own types); the text."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    question = "What is the capital of France? Answer in one word."
    r = client.responses.create(model=model, input=question, max_output_tokens=16, temperature=0)
    assert r.status in {"completed", "incomplete"} and "paris" in r.output_text.lower(), r.output_text
    assert r.usage is not None and r.usage.output_tokens >= 1 and r.usage.input_tokens > 5

    stream = client.responses.create(model=model, input=question, max_output_tokens=16, temperature=0, stream=True)
    deltas, final = [], None
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert final is not None and final.id != r.id
    assert "".join(deltas) == final.output_text == r.output_text
    assert final.usage is not None and final.usage.output_tokens == r.usage.output_tokens
    return r.output_text
