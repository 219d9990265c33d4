"""Routes of `/v1/responses`: create (whole or streamed), retrieve and delete a stored response."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import loaded_service
from services.common.sse import sse_event, sse_response

from .protocol import ResponseDeleted, ResponsesRequest, ResponsesResponse
from .serving import Event, ResponsesService
from .store import ResponseStore


def response_store(request: Request) -> ResponseStore:
    """The app's store of past responses (made by the app factory)."""
    store: ResponseStore = request.app.state.responses_store
    return store


async def get_responses(request: Request) -> ResponsesService:
    return ResponsesService(loaded_service(request), response_store(request))


Responses = Annotated[ResponsesService, Depends(get_responses)]
Store = Annotated[ResponseStore, Depends(response_store)]
router = APIRouter(tags=["openai"])
# Retrieve and delete: any service with a response store (the RAG service's `rag:` models too).
store_router = APIRouter(tags=["openai"])

_CREATE = {
    200: sse_response_doc("The response; with `stream: true`, typed events (`event: <type>`), `response.completed` "
                          "(or `response.incomplete`, `response.failed`) last."),
    **error_responses(400, 401, 404, 413, 429, 503, e404="Unknown model or previous_response_id."),
}  # fmt: skip
_BY_ID = error_responses(401, 404, 429, 503, e404="No stored response with this id.")


def respond(result: ResponsesResponse | AsyncIterator[Event]) -> Response:
    """The response as JSON, or its events as server-sent events (`event: <type>`, `data: <json>`)."""
    if isinstance(result, ResponsesResponse):
        return JSONResponse(result.model_dump(mode="json"))

    async def encoded() -> AsyncIterator[str]:
        async with contextlib.aclosing(result):  # type: ignore[type-var]
            async for event in result:
                yield sse_event(event["type"], event)

    return sse_response(encoded())


@router.post("/v1/responses", response_model=ResponsesResponse, responses=_CREATE)
async def create_response(body: ResponsesRequest, request: Request, responses: Responses) -> Response:
    """OpenAI's Responses API on the served model: text, function tools, JSON output, `previous_response_id`."""
    return respond(await cancel_on_disconnect(request, responses.create(body)))


@store_router.get("/v1/responses/{response_id}", response_model=ResponsesResponse, responses=_BY_ID)
async def get_response(response_id: str, store: Store) -> ResponsesResponse:
    """A stored response (`store: true`, the default)."""
    return store.get(response_id).response


@store_router.delete("/v1/responses/{response_id}", response_model=ResponseDeleted, responses=_BY_ID)
async def delete_response(response_id: str, store: Store) -> dict[str, Any]:
    store.delete(response_id)
    return ResponseDeleted(id=response_id).model_dump()


router.include_router(store_router)
