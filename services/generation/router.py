"""HTTP routes of the generation service: they only turn the serving layer's results into responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.common.auth import check_api_key
from services.common.errors import NotReady, error_body
from services.common.http import cancel_on_disconnect
from services.common.sse import sse_response

from .protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ModelList
from .serving import GenerationService


async def _require_key(request: Request) -> None:
    check_api_key(request, request.app.state.settings.api_key)


async def get_service(request: Request) -> GenerationService:
    service: GenerationService | None = request.app.state.generation
    if service is None:
        error = request.app.state.load_error
        raise NotReady(f"The model failed to load: {error}" if error else "The model is still loading.")
    return service


Service = Annotated[GenerationService, Depends(get_service)]

router = APIRouter(dependencies=[Depends(_require_key)])


async def _respond(request: Request, result: Any) -> Response:
    if isinstance(result, AsyncIterator):
        return sse_response(result)
    return JSONResponse(result.model_dump(exclude_none=True))


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request (OpenAI error body)."},
    404: {"description": "Unknown model."},
    429: {"description": "Over capacity; see Retry-After."},
    503: {"description": "Model not loaded yet."},
}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_RESPONSES, tags=["openai"])
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI chat completions; `stream: true` answers with server-sent events."""
    return await _respond(request, await cancel_on_disconnect(request, service.chat(body)))


@router.post("/v1/chat", response_model=ChatCompletionResponse, responses=_RESPONSES, tags=["openai"])
async def chat(body: ChatCompletionRequest, request: Request, service: Service) -> Response:
    """Same request and response as /v1/chat/completions."""
    return await chat_completions(body, request, service)


@router.post("/v1/completions", response_model=CompletionResponse, responses=_RESPONSES, tags=["openai"])
async def completions(body: CompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI (legacy) text completions."""
    return await _respond(request, await cancel_on_disconnect(request, service.completions(body)))


@router.get("/v1/models", response_model=ModelList, tags=["openai"])
async def models(service: Service) -> ModelList:
    return service.models()


@router.get("/health", tags=["ops"])
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", tags=["ops"], responses={503: {"description": "Model not loaded yet."}})
async def ready(request: Request) -> Response:
    """Readiness: the model is loaded and the engine started."""
    if request.app.state.generation is None:
        error = request.app.state.load_error
        message = f"model failed to load: {error}" if error else "model loading"
        return JSONResponse(error_body(message, "service_unavailable", code="not_ready"), status_code=503)
    return JSONResponse({"status": "ready"})
