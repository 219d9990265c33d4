"""HTTP routes of the generation service: they only turn the serving layer's results into responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from inferag_protocol.perplexity import PerplexityRequest, PerplexityResponse
from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import keyed_router, service_dependency
from services.common.sse import openai_stream, sse_response

from . import perplexity as ppl
from . import tokenize as tok
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from .responses.router import router as responses_router
from .serving import GenerationService

Service = Annotated[GenerationService, Depends(service_dependency)]
router = keyed_router()


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
@router.post("/v1/chat", response_model=ChatCompletionResponse, responses=_RESPONSES, tags=["openai"], name="chat",
             description="Same request and response as /v1/chat/completions.")
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI chat completions; `stream: true` answers with server-sent events."""
    return _respond(await cancel_on_disconnect(request, service.chat(body)))


@router.post("/v1/completions", response_model=CompletionResponse, responses=_RESPONSES, tags=["openai"])
async def completions(body: CompletionRequest, request: Request, service: Service) -> Response:
    """OpenAI (legacy) text completions."""
    return _respond(await cancel_on_disconnect(request, service.completions(body)))


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429, 503), tags=["openai"])
async def models(service: Service) -> ModelList:
    return service.models()


# ---------------------------------------------------------------- tokenize, detokenize, version, perplexity

_TOKEN_ERRORS = error_responses(400, 401, 404, 413, 429, 503, e404="Unknown model.")


@router.post("/tokenize", response_model=TokenizeResponse, responses=_TOKEN_ERRORS, tags=["vllm"])
async def tokenize(body: TokenizeRequest, service: Service) -> TokenizeResponse:
    """vLLM's /tokenize: the token ids of a `prompt`, or of `messages` rendered as chat renders them."""
    return await tok.tokenize(service, body)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_TOKEN_ERRORS, tags=["vllm"])
async def detokenize(body: DetokenizeRequest, service: Service) -> DetokenizeResponse:
    """vLLM's /detokenize: the text of token ids."""
    return await tok.detokenize(service, body)


@router.get("/version", response_model=VersionResponse, responses=error_responses(401, 429, 503), tags=["vllm"])
async def version(service: Service) -> VersionResponse:
    return tok.version(service)


@router.post("/v1/perplexity", response_model=PerplexityResponse, responses=_TOKEN_ERRORS, tags=["openai"])
async def perplexity(body: PerplexityRequest, request: Request, service: Service) -> Response:
    """Per-token logprobs, mean negative logprob and perplexity of each text (the first token is not scored)."""
    result = await cancel_on_disconnect(request, ppl.perplexity(service, body))
    return JSONResponse(result.model_dump(mode="json", exclude_none=True))


router.include_router(responses_router)
