"""HTTP routes of the generation service: they only turn the serving layer's results into responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import loaded_service, require_key
from services.common.sse import openai_stream, sse_response

from .protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ModelList
from .serving import GenerationService


async def get_service(request: Request) -> GenerationService:
    service: GenerationService = loaded_service(request)
    return service


Service = Annotated[GenerationService, Depends(get_service)]

router = APIRouter(dependencies=[Depends(require_key)])


def _respond(result: Any) -> Response:
    """The serving layer's result as HTTP: a JSON body, or its typed chunks encoded as SSE (only here)."""
    if isinstance(result, AsyncIterator):
        return sse_response(openai_stream(result))
    return JSONResponse(result.model_dump(exclude_none=True))


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: sse_response_doc("The completion; with `stream: true`, server-sent chunks, `data: [DONE]` last."),
    **error_responses(400, 401, 404, 413, 429, 503, e404="Unknown model.", e429="Over capacity; see Retry-After."),
}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_RESPONSES, tags=["openai"])
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI chat completions; `stream: true` answers with server-sent events."""
    return _respond(await cancel_on_disconnect(request, service.chat(body)))


@router.post("/v1/chat", response_model=ChatCompletionResponse, responses=_RESPONSES, tags=["openai"])
async def chat(body: ChatCompletionRequest, request: Request, service: Service) -> Response:
    """Same request and response as /v1/chat/completions."""
    return await chat_completions(body, request, service)


@router.post("/v1/completions", response_model=CompletionResponse, responses=_RESPONSES, tags=["openai"])
async def completions(body: CompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI (legacy) text completions."""
    return _respond(await cancel_on_disconnect(request, service.completions(body)))


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429, 503), tags=["openai"])
async def models(service: Service) -> ModelList:
    return service.models()
