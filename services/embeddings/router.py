"""HTTP routes of the embeddings service: they only turn the serving layer's results into responses."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses
from services.common.service import keyed_router, service_dependency

from .protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    RerankRequest,
    RerankResponse,
    SparseEmbeddingRequest,
    SparseEmbeddingResponse,
)
from .serving import EmbeddingsService

Service = Annotated[EmbeddingsService, Depends(service_dependency)]
router = keyed_router()

_RESPONSES = error_responses(400, 401, 404, 413, 429, 503, e404="Unknown model.", e429="Queue full; see Retry-After.")


def _json(result: BaseModel) -> Response:
    # pydantic's serializer writes thousands of floats much faster than json.dumps
    return Response(result.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_RESPONSES, tags=["openai"])
async def embeddings(body: EmbeddingRequest, request: Request, service: Service) -> Response:
    """OpenAI embeddings: texts or token arrays in, float or base64 vectors out."""
    return _json(await cancel_on_disconnect(request, service.embed(body)))


@router.post("/v1/rerank", response_model=RerankResponse, responses=_RESPONSES, tags=["rerank"])
@router.post("/rerank", response_model=RerankResponse, responses=_RESPONSES, tags=["rerank"], name="rerank_alias",
             description="Same request and response as /v1/rerank.")
async def rerank(body: RerankRequest, request: Request, service: Service) -> Response:
    """Cohere/Jina rerank: documents scored against the query, best first."""
    return _json(await cancel_on_disconnect(request, service.rerank(body)))


@router.post("/v1/sparse-embeddings", response_model=SparseEmbeddingResponse, responses=_RESPONSES, tags=["sparse"])
async def sparse_embeddings(body: SparseEmbeddingRequest, request: Request, service: Service) -> Response:
    """SPLADE sparse vectors ({indices, values} over the vocabulary) for hybrid search."""
    return _json(await cancel_on_disconnect(request, service.sparse(body)))


@router.get(
    "/v1/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    responses=error_responses(401, 429, 503),
    tags=["openai"],
)
async def models(service: Service) -> ModelList:
    """Served models with their dimension, input limit and truncation rule."""
    return service.models()
