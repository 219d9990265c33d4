"""Schemathesis over each service's OpenAPI: zero 5xx, zero responses outside the declared schema.

The whole stack runs in a thread of this process (tiny random Llama, MiniLM and splade-tiny, embedded
Qdrant in memory, collection `kb` seeded so path parameters can hit real data), each service app on its
own local port. Each service is fuzzed with its own `openapi()`: every response must be a non-5xx with
a documented status code, content type and body (error bodies and each streamed event included), and
methods a path does not have must answer 405.

Not checked: `negative_data_rejection` (pydantic's lax mode accepts `0` for a bool or `"1"` for an int
on purpose) and `positive_data_acceptance` (cross-field rules the schema cannot say, like "exactly one
of `query` and `messages`", reject some schema-valid bodies with a documented 400).

Short form (CI, the default): schemathesis's coverage cases plus 5 generated cases per operation, the
same every run; about a minute on 2 cores. Long form, before a release or after touching request
models, with new random cases each run::

    INFERAG_FUZZ_EXAMPLES=200 pytest tests/api/test_fuzz.py -p no:cacheprovider

`INFERAG_FUZZ_EXAMPLES` is the number of generated cases per operation; `INFERAG_FUZZ_TRACE=1 pytest -s`
prints one line per case (status, time, response head). Model work stays small in both forms: at most
8 new tokens and 2 agent steps per call (token counts over the context window are sent as they are:
they must be a fast 400).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.protocol import sse_response_doc
from services.embeddings.settings import EmbeddingsSettings
from services.gateway.app import Gateway, build_gateway
from services.gateway.settings import GatewaySettings
from services.rag.settings import RagSettings
from tests.conftest import tiny_settings

EXAMPLES = int(os.environ.get("INFERAG_FUZZ_EXAMPLES", "5"))
TRACE = bool(os.environ.get("INFERAG_FUZZ_TRACE"))

DOCS: list[dict[str, Any]] = [
    {"id": "cats", "text": "Cats are small domesticated felines. They purr when content.", "metadata": {"year": 2021}},
    {"id": "sprocket", "text": "Part ZQX-4471 is the sprocket of the gearbox assembly.", "metadata": {"year": 2023}},
]

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.unsupported_method,
]

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # CI runs the same cases every time; the long form is where new ones come from.
    derandomize="INFERAG_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _gateway(model_dir: Path) -> Gateway:
    return build_gateway(
        GatewaySettings(),
        tiny_settings(model_dir),
        EmbeddingsSettings(num_threads=1),  # the packaged splade-tiny too, so /v1/sparse-embeddings answers
        RagSettings(qdrant_path=":memory:"),
    )


async def _serve(model_dir: Path, started: concurrent.futures.Future[dict[str, str]], stop: asyncio.Event) -> None:
    """Run the stack, seed `kb`, then serve each service app on its own local port until `stop`."""
    gateway = _gateway(model_dir)
    async with gateway.front.router.lifespan_context(gateway.front):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://stack", timeout=120) as client:
            for _ in range(1200):
                if (resp := await client.get("/ready")).status_code == 200 or "failed" in resp.text:
                    break
                await asyncio.sleep(0.1)
            assert resp.status_code == 200, resp.text
            resp = await client.post("/rag/collections/kb/documents", json={"documents": DOCS})
            assert resp.status_code == 200, resp.text
            # a stored response, so that half the retrievals and deletions find one
            body = {"model": "tiny-llama", "input": "Hi", "max_output_tokens": 2}
            resp = await client.post("/v1/responses", json=body)
            assert resp.status_code == 200, resp.text
            REAL_PATH_VALUES["response_id"] = resp.json()["id"]
        servers, tasks, urls = [], [], {}
        for name, app in gateway.services.items():
            sock = socket.create_server(("127.0.0.1", 0))
            urls[name] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            # Lifespan off: the gateway's (above) already runs every service's, so models load once.
            server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
            servers.append(server)
            tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not all(s.started for s in servers):  # noqa: ASYNC110 (uvicorn has no started event)
            await asyncio.sleep(0.01)
        started.set_result(urls)
        await stop.wait()
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """Base URL of each service of the running stack (its own thread and event loop).

    Real HTTP rather than schemathesis's in-process ASGI calls: its pytest plugin ends every ASGI
    lifespan after each test (the models would reload per operation), and its calls are synchronous,
    so the stack needs an event loop of its own.
    """
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started: concurrent.futures.Future[dict[str, str]] = concurrent.futures.Future()

    def run() -> None:
        try:
            loop.run_until_complete(_serve(tiny_model_dir, started, stop))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=run, name="fuzz-stack", daemon=True)
    thread.start()
    try:
        yield started.result(timeout=300)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        if not thread.is_alive():
            loop.close()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI with its hidden chat route too: the RAG service's `rag:` chat is left out of its
    docs (the generation service documents the route), and the fuzzing must reach it all the same, with
    models named `rag:` and one or more names of any characters after it."""
    hidden = False
    for route in app.routes:
        if isinstance(route, APIRoute) and not route.include_in_schema and route.path.startswith("/v1/chat"):
            route.include_in_schema = hidden = True
            # It streams with `stream: true`, like the generation service's chat.
            route.responses = {**route.responses, 200: sse_response_doc("Chat completion, or its chunks.")}
    spec = app.openapi()
    if hidden:
        model = {"type": "string", "pattern": "^rag:[^,]{0,70}(,[^,]{0,70}){0,20}$"}
        spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"] = model
    return spec


# The documents only: these apps are never started (the OpenAPI is needed when tests are collected).
SCHEMAS = {
    name: schemathesis.openapi.from_dict(_openapi(app))
    for name, app in _gateway(Path("unused")).services.items()
    if isinstance(app, FastAPI)
}

# Random names rarely exist: positive cases use the stack's real models and collection instead (negative
# ones keep theirs), and half the path parameters name real data.
REAL_MODELS = {"/v1/embeddings": "all-minilm-l6-v2", "/v1/completions": "tiny-llama", "/v1/chat": "tiny-llama",
               "/v1/responses": "tiny-llama", "/v1/perplexity": "tiny-llama", "/tokenize": "tiny-llama",
               "/detokenize": "tiny-llama"}  # fmt: skip
REAL_PATH_VALUES = {"name": "kb", "doc_id": "cats"}


def flatmap_path_parameters(context: Any, params: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    if not params:
        return st.just(params)
    real = {k: REAL_PATH_VALUES.get(k, v) for k, v in params.items()}
    return st.sampled_from([params, real])


for _schema in SCHEMAS.values():
    _schema.hook(flatmap_path_parameters)


_RAG_CASES = itertools.count()


def _realistic(case: Any, service: str) -> None:
    """Positive cases: the stack's real names, and the cross-field rules the schema cannot say.

    Generated from the schema alone, nearly every such body breaks a model validator (a 'tool' message
    without content, both `collection` and `collections`...) and the success paths would go untested.
    The RAG service's chat takes `rag:<collections>` models: half its cases name the seeded collection,
    the others the generated string (random collection names, lists, characters no name may have).
    """
    body = case.body
    if not isinstance(body, dict) or case.meta is None or not case.meta.generation.mode.is_positive:
        return
    rag_chat = service == "rag" and case.path.startswith("/v1/chat")
    if isinstance(body.get("model"), str):
        if rag_chat:
            model: str | None = "rag:kb" if next(_RAG_CASES) % 2 else body["model"]
        else:
            model = next((m for path, m in REAL_MODELS.items() if case.path.startswith(path)), None)
        if model is None:
            del body["model"]  # rerank and sparse: the served default
        else:
            body["model"] = "rag:kb" if service == "rag" and case.path == "/v1/responses" else model
    if case.path in ("/rag/query", "/rag/agent", "/rag/retrieve"):
        if body.get("collections"):
            body["collections"] = ["kb"]
            body.pop("collection", None)
        else:
            body["collection"] = "kb"
            body.pop("collections", None)
    if case.path in ("/rag/query", "/rag/agent"):
        if body.get("messages") and body.get("query"):
            del body["messages"]
        elif not body.get("messages"):
            body["query"] = "What is part ZQX-4471?"
        if not body.get("tools"):
            body.pop("tools", None)
    if case.path == "/rag/rerank" and body.get("documents") is not None:
        body.pop("hits", None)
    if not body.get("tools"):
        body.pop("tool_choice", None)
    messages = body.get("messages") or []
    for message in messages:
        if isinstance(message, dict):
            message["content"] = message.get("content") or "What is part ZQX-4471?"
            if message.get("role") == "tool":
                message["tool_call_id"] = message.get("tool_call_id") or "call-0"
    if (case.path.startswith("/rag/") or rag_chat) and messages and isinstance(messages[-1], dict):
        messages[-1]["role"] = "user"
    if body.get("prompt") == "":
        body["prompt"] = "Once upon a time"


MODEL_ROUTES = ("/v1/chat/completions", "/v1/chat", "/v1/completions", "/v1/responses", "/rag/query", "/rag/agent")


def _bounded(case: Any) -> None:
    """Keep model work small on CPU: few new tokens per call, few agent turns.

    Token counts over the context window are left alone: they must stay a fast 400.
    """
    body = case.body
    if not isinstance(body, dict) or case.path not in MODEL_ROUTES:
        return
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        unset_limit = key == ("max_output_tokens" if case.path == "/v1/responses" else "max_tokens")
        if (value is None and unset_limit) or (isinstance(value, int) and 8 < value <= 4096):
            body[key] = 8
    if isinstance(body.get("max_steps"), int) and body["max_steps"] > 2:
        body["max_steps"] = 2


def _check(case: Any, base_url: str, service: str) -> None:
    _realistic(case, service)
    _bounded(case)
    resp = case.call_and_validate(base_url=base_url, checks=CHECKS)
    if TRACE:  # one line per case: method, path, status, seconds, generation mode, response head
        mode = case.meta.generation.mode.value if case.meta else "-"
        print("CASE", case.method, case.path, resp.status_code, round(resp.elapsed, 2), mode, resp.content[:160])
    if case.method == "DELETE" and (case.path_parameters or {}).get("name") == "kb":
        # Put `kb` back for the operations after this one.
        resp = requests.post(f"{base_url}/rag/collections/kb/documents", json={"documents": DOCS}, timeout=60)
        assert resp.status_code == 200, resp.text


@SCHEMAS["generation"].parametrize()
@FUZZ_SETTINGS
def test_generation(case: Any, stack: dict[str, str]) -> None:
    _check(case, stack["generation"], "generation")


@SCHEMAS["embeddings"].parametrize()
@FUZZ_SETTINGS
def test_embeddings(case: Any, stack: dict[str, str]) -> None:
    _check(case, stack["embeddings"], "embeddings")


@SCHEMAS["rag"].parametrize()
@FUZZ_SETTINGS
def test_rag(case: Any, stack: dict[str, str]) -> None:
    _check(case, stack["rag"], "rag")


# ---------------------------------------------------------------- what the fuzzing found, pinned


@pytest.mark.parametrize(
    "extra",
    [
        # float32 turned the penalty into 0: logits went +inf (NaN logprobs, a 500 writing the JSON) ...
        {"repetition_penalty": 5e-324, "logprobs": True, "top_logprobs": 2},
        # ... and masked tokens -inf * 0 = NaN, which argmax picked past the grammar (a 500).
        {"repetition_penalty": 5e-324, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        # `type: text` with a `json_schema` beside it is plain text, not constrained.
        {"response_format": {"type": "text", "json_schema": {"schema": {"type": "integer"}}}},
    ],
)
def test_generation_regressions(stack: dict[str, str], extra: dict[str, Any]) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}
    resp = requests.post(f"{stack['generation']}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    for token in (resp.json()["choices"][0].get("logprobs") or {}).get("content", []):
        assert token["logprob"] >= -9999.0


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_openapi_refs_resolve(name: str) -> None:
    """Every `$ref` names a component (the JSON ingest body once pointed at a missing one)."""
    spec = SCHEMAS[name].raw_schema
    components = spec.get("components", {}).get("schemas", {})

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    missing = {r for r in refs(spec) if r.removeprefix("#/components/schemas/") not in components}
    assert not missing


def test_filter_key_outside_qdrant_paths_is_400(stack: dict[str, str]) -> None:
    """A metadata filter key Qdrant cannot parse as a path was a 500 from the embedded store."""
    body = {"collection": "kb", "query": "sprocket", "filter": {"=\u00ddE\u0094": 91}}
    resp = requests.post(f"{stack['rag']}/rag/retrieve", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "filter"


@settings(FUZZ_SETTINGS, max_examples=max(EXAMPLES, 40))  # each case is a fast refusal
@given(names=st.lists(st.text(max_size=70), min_size=1, max_size=20))
def test_rag_model_names(stack: dict[str, str], names: list[str]) -> None:
    """Any `rag:<names>` model is an answer or a 4xx in the error body: a name no collection may have
    raised a ValidationError inside the route (the started stack reset the connection)."""
    model = "rag:" + ",".join(names)
    body = {"model": model, "messages": [{"role": "user", "content": "What is part ZQX-4471?"}], "max_tokens": 4}
    resp = requests.post(f"{stack['rag']}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code in (200, 400, 404), resp.text
    if resp.status_code != 200:
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        assert resp.json()["error"]["param"] == "model"
