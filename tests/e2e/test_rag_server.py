"""The one-command stack (`make run`'s process) answering from a collection with the real packaged models.

SmolLM2-135M is too small for good answers: these tests check the protocol (events,
citations that name given sources, the agent's trace), not the wisdom.
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


def test_query_and_stream(stack: str) -> None:
    body = {"collection": COLLECTION, "query": "Qu'est-ce que le RAG ?", "max_tokens": 48}
    answer = httpx.post(f"{stack}/rag/query", json=body, timeout=300).json()
    assert answer["answer"] and answer["sources"], answer
    given = {s["number"] for s in answer["sources"]}
    assert {c["number"] for c in answer["citations"]} <= given
    with httpx.stream("POST", f"{stack}/rag/query", json={**body, "stream": True}, timeout=300) as resp:
        events = sse(resp)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "retrieval" and kinds[-2:] == ["citations", "done"] and "delta" in kinds


def test_rag_model_with_the_openai_sdk(stack: str) -> None:
    client = openai.OpenAI(base_url=stack + "/v1", api_key="unused")
    assert f"rag:{COLLECTION}" in {m.id for m in client.models.list().data}
    chat = client.chat.completions.create(
        model=f"rag:{COLLECTION}", messages=[{"role": "user", "content": "Qu'est-ce que LoRA ?"}], max_tokens=32
    )
    assert chat.choices[0].message.content
    assert isinstance((chat.model_extra or {}).get("sources"), list)


def test_agent_streams_a_well_formed_trace(stack: str) -> None:
    body = {"collection": COLLECTION, "query": "Qu'est-ce que la quantification ?", "max_steps": 2,
            "max_tokens": 96, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{stack}/rag/agent", json=body, timeout=600) as resp:
        assert resp.status_code == 200
        events = sse(resp)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and "error" not in kinds, events
    calls = {e["id"]: e for e in events if e["type"] == "tool_call"}
    results = {e["id"]: e for e in events if e["type"] == "tool_result"}
    assert calls.keys() == results.keys()
    for call in calls.values():
        assert call["tool"] in {"search_knowledge_base", "get_document", "calculator", "list_collections"}
    done = events[-1]
    assert done["stopped_reason"] in {"answer", "max_steps"} and done["usage"]
    if done["stopped_reason"] == "answer":
        assert "delta" in kinds and "citations" in kinds
