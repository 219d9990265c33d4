"""The whole stack (`python -m services.gateway.app`) on a free port with its own Qdrant folder, for the
client tests (SDK, CLI, playground)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.servers import free_port, running

# Short answers keep the tests fast on CPU; the tiny generation model is the gateway's default.
BASE_ENV = {
    "INFERAG_GEN_DEFAULT_MAX_TOKENS": "48",
    "INFERAG_LOG_LEVEL": "warning",
}

DOCS = {
    "qdrant.md": "# Qdrant\n\nQdrant is the vector database of the stack. It stores the dense and sparse vectors "
    "of every chunk and answers hybrid searches fused with reciprocal rank fusion.\n",
    "lora.txt": "LoRA fine-tuning trains small low-rank adapter matrices instead of the full weights of the model. "
    "The adapters are merged into the base weights at startup.\n",
    "paris.html": "<html><body><h1>Paris</h1><p>The Eiffel Tower is in Paris, the capital of France. "
    "It was finished in 1889.</p></body></html>",
}


@contextlib.contextmanager
def stack(folder: Path, command: str | list[str] = "services.gateway.app", **env: str) -> Iterator[str]:
    """Start the gateway with its data under `folder`; yields its base URL."""
    port = free_port()
    full = {
        **BASE_ENV,
        "INFERAG_PORT": str(port),
        "INFERAG_RAG_QDRANT_PATH": str(folder / "qdrant"),
        **env,
    }
    with running(command, full, port=port, timeout=600) as base:
        yield base


def write_docs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in DOCS.items():
        paths[name] = folder / name
        paths[name].write_text(text, encoding="utf-8")
    return paths
