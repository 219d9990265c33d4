"""The interfaces the RAG orchestrator uses, with an in-process and an HTTP implementation.

`Embedder`, `Reranker` and `SparseEmbedder` are protocols; `InProcessEmbeddings` (the
models in this process, behind the same serving layer and batchers as the server)
and `HttpEmbeddings` (httpx against a running service) both implement all three, and
`open_embeddings` picks one from configuration. The same test suite runs against both.

Errors come back as the domain errors of `services.common.errors` either way
(`InvalidRequest`, `ModelNotFound`, `Overloaded`, `UpstreamUnavailable`...).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from services.common.errors import NotFound
from services.common.upstream import NO_RETRY, Retry, call
from services.common.vectors import SparseVector

from .serving import EmbeddingsService
from .settings import OPENAI_MAX_INPUTS, EmbeddingsSettings


@runtime_checkable
class Embedder(Protocol):
    @property
    def embed_model(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_input_tokens(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (unit length for normalizing models such as MiniLM)."""
        ...


@runtime_checkable
class Reranker(Protocol):
    @property
    def rerank_model(self) -> str: ...

    @property
    def rerank_method(self) -> str: ...

    async def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """(document index, relevance score) pairs, best first, at most `top_n`."""
        ...


@runtime_checkable
class SparseEmbedder(Protocol):
    @property
    def sparse_model(self) -> str: ...

    async def sparse(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text, in order."""
        ...


def _ranked(scores: Sequence[float], top_n: int | None) -> list[tuple[int, float]]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [(i, float(scores[i])) for i in order[:top_n]]


class InProcessEmbeddings:
    """The models in this process: the serving layer's building blocks, batching included."""

    def __init__(self, service: EmbeddingsService, *, owned: bool = False, retry: Retry = NO_RETRY):
        """`retry`: how a full batching queue (429) is waited out before the caller sees it."""
        self.service = service
        self._owned = owned
        self._retry = retry

    @classmethod
    async def load(cls, settings: EmbeddingsSettings | None = None) -> InProcessEmbeddings:
        """Load the configured models here (blocking work runs off the event loop); `aclose` releases them."""
        from .app import load_service

        service = await load_service(settings or EmbeddingsSettings(), CollectorRegistry())
        return cls(service, owned=True)

    async def aclose(self) -> None:
        if self._owned:
            await self.service.stop()

    @property
    def embed_model(self) -> str:
        return self.service.names.embed

    @property
    def dimension(self) -> int:
        return self.service.dense.info.dimension

    @property
    def max_input_tokens(self) -> int:
        return self.service.dense.info.max_tokens

    @property
    def rerank_model(self) -> str:
        if self.service.names.rerank is None:
            raise NotFound("This service has no reranker.", code="model_not_found")
        return self.service.names.rerank

    @property
    def rerank_method(self) -> str:
        return self.service.rerank_method or "none"

    @property
    def sparse_model(self) -> str:
        if self.service.names.sparse is None:
            raise NotFound("This service has no sparse model.", code="model_not_found")
        return self.service.names.sparse

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self.service.limits.max_inputs):
            part = list(texts[start : start + self.service.limits.max_inputs])
            vectors, _ = await self._retry.run(partial(self.service.embed_inputs, part), "embeddings")
            out.extend(vectors.tolist())
        return out

    async def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        if self.service.names.rerank is None:
            raise NotFound("This service has no reranker.", code="model_not_found")
        if not documents:
            return []
        scores, _ = await self._retry.run(partial(self.service.rerank_documents, query, list(documents)), "rerank")
        return _ranked(scores, top_n)

    async def sparse(self, texts: Sequence[str]) -> list[SparseVector]:
        out: list[SparseVector] = []
        for start in range(0, len(texts), self.service.limits.max_inputs):
            part = list(texts[start : start + self.service.limits.max_inputs])
            vectors, _ = await self._retry.run(partial(self.service.sparse_inputs, part), "sparse embeddings")
            out.extend(SparseVector(v.indices, v.values) for v in vectors)
        return out


class HttpEmbeddings:
    """The embeddings service over HTTP. Create it with `connect`, which reads the served models."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        models: list[dict[str, Any]],
        *,
        embed_model: str | None = None,
        rerank_model: str | None = None,
        sparse_model: str | None = None,
        batch_size: int = OPENAI_MAX_INPUTS,
        owned: bool = True,
        retry: Retry = NO_RETRY,
    ):
        self.client = client
        self.retry = retry
        self.cards = {m["id"]: m for m in models}
        self._embed = embed_model or self._first("embeddings")
        self._rerank = rerank_model or self._first("rerank")
        self._sparse = sparse_model or self._first("sparse-embeddings")
        self.batch_size = batch_size
        self._owned = owned

    @classmethod
    async def connect(
        cls,
        base_url: str,
        *,
        api_key: str | None = None,
        request_timeout: float = 120,
        client: httpx.AsyncClient | None = None,
        embed_model: str | None = None,
        rerank_model: str | None = None,
        sparse_model: str | None = None,
        retry: Retry = NO_RETRY,
    ) -> HttpEmbeddings:
        """Open a client on `base_url` (e.g. http://127.0.0.1:8001) and read `/v1/models`; every call is
        idempotent, so `retry` applies to all of them."""
        owned = client is None
        if client is None:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=request_timeout)
        try:
            listing = await call(client, "GET", "/v1/models", service="embeddings", retry=retry)
        except BaseException:
            if owned:
                await client.aclose()
            raise
        return cls(
            client,
            listing["data"],
            embed_model=embed_model,
            rerank_model=rerank_model,
            sparse_model=sparse_model,
            owned=owned,
            retry=retry,
        )

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()

    def _first(self, capability: str) -> str | None:
        return next((m["id"] for m in self.cards.values() if capability in m.get("capabilities", ())), None)

    def _need(self, name: str | None, what: str) -> str:
        if name is None:
            raise NotFound(f"The embeddings service serves no {what} model.", code="model_not_found")
        return name

    @property
    def embed_model(self) -> str:
        return self._need(self._embed, "embedding")

    @property
    def dimension(self) -> int:
        return int(self.cards[self.embed_model]["dimension"])

    @property
    def max_input_tokens(self) -> int:
        return int(self.cards[self.embed_model]["max_input_tokens"])

    @property
    def rerank_model(self) -> str:
        return self._need(self._rerank, "rerank")

    @property
    def rerank_method(self) -> str:
        return str(self.cards[self.rerank_model].get("rerank_method") or "none")

    @property
    def sparse_model(self) -> str:
        return self._need(self._sparse, "sparse")

    async def _request(self, path: str, body: Any) -> dict[str, Any]:
        return await call(self.client, "POST", path, body, service="embeddings", retry=self.retry)

    def _limit(self, model: str, key: str) -> int:
        return min(self.batch_size, int(self.cards[model].get(key) or self.batch_size))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        step = self._limit(self.embed_model, "max_inputs_per_request")
        for start in range(0, len(texts), step):
            body = {"model": self.embed_model, "input": list(texts[start : start + step]), "encoding_format": "base64"}
            data = (await self._request("/v1/embeddings", body))["data"]
            for item in sorted(data, key=lambda d: d["index"]):
                out.append(np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4").tolist())
        return out

    async def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        if not documents:
            return []
        # Scores do not depend on the other documents, so a long list goes in slices and is merged here.
        step = self._limit(self.rerank_model, "max_documents_per_request")
        scores: list[float] = [0.0] * len(documents)
        for start in range(0, len(documents), step):
            body = {"model": self.rerank_model, "query": query, "documents": list(documents[start : start + step])}
            for r in (await self._request("/v1/rerank", body))["results"]:
                scores[start + int(r["index"])] = float(r["relevance_score"])
        return _ranked(scores, top_n)

    async def sparse(self, texts: Sequence[str]) -> list[SparseVector]:
        out: list[SparseVector] = []
        step = self._limit(self.sparse_model, "max_inputs_per_request")
        for start in range(0, len(texts), step):
            body = {"model": self.sparse_model, "input": list(texts[start : start + step])}
            data = (await self._request("/v1/sparse-embeddings", body))["data"]
            for item in sorted(data, key=lambda d: d["index"]):
                out.append(SparseVector(item["embedding"]["indices"], item["embedding"]["values"]))
        return out


async def open_embeddings(
    url: str | None = None, *, settings: EmbeddingsSettings | None = None, api_key: str | None = None
) -> InProcessEmbeddings | HttpEmbeddings:
    """The service at `url` when one is given, otherwise the models loaded in this process."""
    if url:
        return await HttpEmbeddings.connect(url, api_key=api_key)
    return await InProcessEmbeddings.load(settings)
