"""The whole stack in this process (gateway: generation + embeddings + RAG) for API tests.

Generation runs a tiny random Llama on the transformers engine (fast, answers are noise),
embeddings the real packaged all-MiniLM-L6-v2, and the store is embedded Qdrant in memory
unless a path is given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from services.embeddings.settings import EmbeddingsSettings
from services.gateway.app import Gateway, build_gateway
from services.gateway.settings import GatewaySettings
from services.rag.settings import RagSettings
from tests.conftest import tiny_settings


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer is `text` (ASCII), with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@contextlib.asynccontextmanager
async def rag_stack(
    tiny_model_dir: Path,
    *,
    api_key: str | None = None,
    common: dict[str, Any] | None = None,
    embeddings: dict[str, Any] | None = None,
    **rag: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """A client on the in-process gateway, once every service is ready.

    `common` settings (keys, rate limits, CORS...) apply to every service, `embeddings` to the embeddings
    service, `rag` to the RAG service.
    """
    shared: dict[str, Any] = {"api_key": api_key, **(common or {})}
    gateway = build_gateway(
        GatewaySettings(**shared),
        tiny_settings(tiny_model_dir, **shared),
        EmbeddingsSettings(**{"sparse_model": "none", "num_threads": 1, **shared, **(embeddings or {})}),
        RagSettings(**{"qdrant_path": ":memory:", **shared, **rag}),
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with gateway.front.router.lifespan_context(gateway.front):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120, headers=headers) as c:
            for _ in range(1200):
                resp = await c.get("/ready")
                if resp.status_code == 200:
                    break
                if "failed" in resp.text:
                    raise RuntimeError(resp.text)
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"stack not ready: {resp.text}")
            yield c, gateway
