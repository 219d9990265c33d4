"""The one-command stack (`make run`'s process) answering from a collection with the real packaged models.

The protocol is checked on every answer (events, citations that name given sources, quotes that are
exact substrings of their sources, the agent's trace that starts with a search); the Zorblax question
checks the answer itself: it needs the grounded-answering adapter merged into the default model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.rag.eval import load_dataset
from tests.servers import REPO_ROOT, free_port, running

pytestmark = pytest.mark.slow

COLLECTION = "course"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qdrant")


@pytest.fixture(scope="module")
def stack(store_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {"INFERAG_PORT": str(port), "INFERAG_GEN_DEFAULT_MAX_TOKENS": "48", "INFERAG_LOG_LEVEL": "warning",
           "INFERAG_RAG_QDRANT_PATH": str(store_dir)}  # fmt: skip
    with running("services.gateway.app", env, port=port, timeout=600) as base:
        dataset = load_dataset(str(REPO_ROOT / "datasets" / "course"))
        docs = [{"id": i, "text": d.text, "source": d.title} for i, d in list(dataset.corpus.items())[:30]]
        resp = httpx.post(
            f"{base}/rag/collections/{COLLECTION}/documents", json={"documents": docs, "background": False}, timeout=300
        )
        assert resp.status_code == 200, resp.text
        yield base


def sse(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]


def test_second_process_on_the_same_store_is_refused_clearly(stack: str, store_dir: Path) -> None:
    env = {**os.environ, "INFERAG_PORT": str(free_port()), "INFERAG_RAG_QDRANT_PATH": str(store_dir)}
    proc = subprocess.run([sys.executable, "-m", "services.gateway.app"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "in use by another process" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def check_quotes(citations: list[dict[str, Any]]) -> None:
    """Each citation's quote is an exact substring of its source's text, at the document offsets it gives."""
    for c in citations:
        quote = c["quote"]
        assert quote and quote["text"], c
        assert c["start"] <= quote["start"] < quote["end"] <= c["end"], c
        assert c["text"][quote["start"] - c["start"] : quote["end"] - c["start"]] == quote["text"], c


def test_query_and_stream(stack: str) -> None:
    body = {"collection": COLLECTION, "query": "Qu'est-ce que le RAG ?", "max_tokens": 48}
    answer = httpx.post(f"{stack}/rag/query", json=body, timeout=300).json()
    assert answer["answer"] and answer["sources"], answer
    given = {s["number"] for s in answer["sources"]}
    assert {c["number"] for c in answer["citations"]} <= given
    check_quotes(answer["citations"])
    with httpx.stream("POST", f"{stack}/rag/query", json={**body, "stream": True}, timeout=300) as resp:
        events = sse(resp)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "retrieval" and kinds[-2:] == ["citations", "done"] and "delta" in kinds
    check_quotes(events[-2]["citations"])


def test_rag_model_with_the_openai_sdk(stack: str) -> None:
    client = openai.OpenAI(base_url=stack + "/v1", api_key="unused")
    assert f"rag:{COLLECTION}" in {m.id for m in client.models.list().data}
    chat = client.chat.completions.create(
        model=f"rag:{COLLECTION}", messages=[{"role": "user", "content": "Qu'est-ce que LoRA ?"}], max_tokens=32
    )
    assert chat.choices[0].message.content
    assert isinstance((chat.model_extra or {}).get("sources"), list)


def agent_events(stack: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{stack}/rag/agent", json={**body, "stream": True}, timeout=900) as resp:
        assert resp.status_code == 200, resp.read()
        return sse(resp)


def check_grounded_trace(events: list[dict[str, Any]], question: str) -> dict[str, Any]:
    """The run searched the knowledge base with the question first, and ended with an answer that cites
    what it saw (or, unsupported, "I don't know" with the sources): never on a bound or an error."""
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["tool_call", "tool_result"], kinds
    assert events[0]["tool"] == "search_knowledge_base" and events[0]["arguments"] == {"query": question}
    assert "error" not in kinds and kinds[-2:] == ["citations", "done"], events
    calls = {e["id"]: e for e in events if e["type"] == "tool_call"}
    results = {e["id"]: e for e in events if e["type"] == "tool_result"}
    assert calls.keys() == results.keys()
    done = events[-1]
    assert done["stopped_reason"] in {"answer", "unsupported"} and done["usage"], done
    assert done["answer"] == "".join(e["text"] for e in events if e["type"] == "delta")
    if done["stopped_reason"] == "unsupported":
        assert done["answer"].startswith("I don't know")
    assert events[-2]["citations"], events[-2]
    check_quotes(events[-2]["citations"])
    return done


def test_agent_streams_a_grounded_trace(stack: str) -> None:
    question = "Qu'est-ce que la quantification ?"
    events = agent_events(stack, {"collection": COLLECTION, "query": question, "max_steps": 2, "max_tokens": 96})
    check_grounded_trace(events, question)


ZORBLAX = ["The Zorblax 3000 battery lasts 41 hours.", "The Quintor X battery lasts 17 hours."]


def default_adapter(stack: str) -> str | None:
    """The grounded-answering adapter merged into the served default model (issue 14.2), if any."""
    models = httpx.get(f"{stack}/v1/models", timeout=30).json()["data"]
    return next((m["details"]["default_adapter"] for m in models if (m.get("details") or {}).get("default_adapter")),
                None)  # fmt: skip


def test_agent_computes_over_retrieved_numbers(stack: str) -> None:
    """The issue's question: both facts found by the search, the difference by the calculator, both cited.

    The plain packaged SmolLM2-135M does not get there (it ends 'unsupported'): this needs the default stack
    with the packaged grounded adapter merged (the default), and runs whenever `/v1/models` reports one."""
    if default_adapter(stack) is None:
        pytest.skip("the served default model has no grounded adapter merged (issue 14.2 not landed)")
    resp = httpx.post(f"{stack}/rag/collections/batteries/documents", timeout=300,
                      json={"documents": [{"id": f"b{i}", "text": t} for i, t in enumerate(ZORBLAX)]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    question = "How many more hours does the Zorblax 3000 battery last than the Quintor X battery?"
    events = agent_events(stack, {"collection": "batteries", "query": question, "max_steps": 4, "max_tokens": 128})
    done = check_grounded_trace(events, question)
    assert done["stopped_reason"] == "answer", done
    assert {c["doc_id"] for c in events[-2]["citations"]} == {"b0", "b1"}, events[-2]
    assert "41" in done["answer"] and "17" in done["answer"], done["answer"]
    # The question asks for a computed number: after the search the agent starts a calculator step and the
    # model writes the expression from what it found.
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [c["tool"] for c in calls][:2] == ["search_knowledge_base", "calculator"], calls
    results = [e for e in events if e["type"] == "tool_result" and e["tool"] == "calculator"]
    assert results and results[0]["observation"].endswith("= 24") and not results[0]["error"], results
    # The adapted model answers with the two cited facts and leaves out the result: the agent writes the
    # calculator's "41 - 17 = 24" after them, and the model continues that line.
    assert "24 hours" in done["answer"].lower(), done["answer"]
