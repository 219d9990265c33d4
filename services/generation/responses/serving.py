"""The Responses API on top of chat: a Responses request becomes a chat request, its answer output items.

Every engine gets it, as it only calls the chat serving layer (`chat` for a whole answer,
`chat_chunks` for the typed chunks of a stream): the same template, tool-call parsing,
structured output, reasoning split and limits as `/v1/chat/completions`. `EventWriter` makes
the typed stream events (`response.created` … `response.completed`, as dicts; the router
encodes them) and is shared with the RAG service's `rag:` models.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from services.common.errors import InferagError, InvalidRequest, error_for

from ..protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ResponseMessage,
)
from .protocol import (
    FunctionCallItem,
    FunctionCallOutput,
    FunctionCallOutputItem,
    IncompleteDetails,
    MessageItem,
    OutputItem,
    OutputLogprob,
    OutputMessage,
    OutputText,
    ReasoningOutput,
    ReasoningText,
    ResponseError,
    ResponsesRequest,
    ResponsesResponse,
    ResponseUsage,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    ToolChoiceFunction,
    TopLogprob,
    content_text,
)
from .store import ResponseStore

T = TypeVar("T")
Event = dict[str, Any]  # one stream event: its `type`, payload and `sequence_number`

# Chat's names for the fields of a Responses request, in error bodies.
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
           "response_format": "text.format"}  # fmt: skip


class ChatBackend(Protocol):
    """What the Responses API needs of a generation service (GenerationService has both)."""

    async def chat(
        self, req: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]: ...

    async def chat_chunks(self, req: ChatCompletionRequest) -> AsyncGenerator[ChatCompletionChunk, None]: ...


# ---------------------------------------------------------------- input → chat


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as chat messages (a function call joins the assistant turn before it)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict[str, Any]] = []
    for item in req.input:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": content_text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "content": content_text(item.output), "tool_call_id": item.call_id})
        # reasoning items: past thinking is not rendered again (chat templates drop it too)
    if not out:
        raise InvalidRequest("The input has no message, function call or function call output.", param="input")
    return out


def output_messages(items: list[OutputItem]) -> list[dict[str, Any]]:
    """A response's output as the assistant turn it adds to the conversation."""
    text = "".join(part.text for item in items if isinstance(item, OutputMessage) for part in item.content)
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in items
        if isinstance(item, FunctionCallOutput)
    ]
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def conversation(req: ResponsesRequest, stores: ResponseStore) -> list[dict[str, Any]]:
    """The previous response's conversation (when continued) and this request's input."""
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        history = stores.get(req.previous_response_id, "previous_response_id").conversation
    return [*history, *input_messages(req)]


def chat_request(req: ResponsesRequest, messages: list[dict[str, Any]], *, stream: bool) -> ChatCompletionRequest:
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    body: dict[str, Any] = {
        "model": req.model,
        "messages": [*system, *messages],
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "top_k": req.top_k,
        "stop": req.stop,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
        "logprobs": req.wants_logprobs(),
        "top_logprobs": req.top_logprobs if req.wants_logprobs() else None,
    }
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
        choice = req.tool_choice
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}} if isinstance(
            choice, ToolChoiceFunction
        ) else choice  # fmt: skip
    fmt = req.text.format if req.text else None
    if isinstance(fmt, TextFormatJsonSchema):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_,
                                                                          "strict": fmt.strict}}  # fmt: skip
    elif isinstance(fmt, TextFormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # e.g. a tool message the chat rules refuse
        first = exc.errors()[0]
        raise InvalidRequest(f"The input cannot be run as a chat: {first.get('msg')}", param="input") from exc


async def renamed(work: Awaitable[T]) -> T:
    """`work`, its errors naming the Responses fields instead of chat's."""
    try:
        return await work
    except InferagError as exc:
        exc.param = _PARAMS.get(exc.param or "", exc.param)
        raise


# ---------------------------------------------------------------- chat → output


def output_logprobs(logprobs: ChoiceLogprobs | None) -> list[OutputLogprob]:
    return [
        OutputLogprob(
            token=t.token,
            bytes=t.bytes or list(t.token.encode()),
            logprob=t.logprob,
            top_logprobs=[
                TopLogprob(token=a.token, bytes=a.bytes or list(a.token.encode()), logprob=a.logprob)
                for a in t.top_logprobs
            ],
        )  # fmt: skip
        for t in (logprobs.content or [] if logprobs else [])
    ]


def output_items(message: ResponseMessage, logprobs: list[OutputLogprob]) -> list[OutputItem]:
    items: list[OutputItem] = []
    if message.reasoning:
        items.append(ReasoningOutput(content=[ReasoningText(text=message.reasoning)]))
    calls = message.tool_calls or []
    if message.content or not calls:
        items.append(OutputMessage(content=[OutputText(text=message.content or "", logprobs=logprobs)]))
    items += [FunctionCallOutput(call_id=c.id, name=c.function.name, arguments=c.function.arguments) for c in calls]
    return items


def response_for(req: ResponsesRequest, **fields: Any) -> ResponsesResponse:
    """A response object echoing the request's settings, with `fields` (id, status, output, usage...)."""
    fmt = req.text.format if req.text else None
    choice = req.tool_choice
    return ResponsesResponse(
        model=req.model,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        parallel_tool_calls=req.parallel_tool_calls,
        previous_response_id=req.previous_response_id,
        temperature=req.temperature,
        top_p=req.top_p,
        tool_choice=choice.model_dump() if isinstance(choice, ToolChoiceFunction) else choice,
        tools=[t.model_dump(mode="json") for t in req.tools],
        text={"format": fmt.model_dump(mode="json", by_alias=True) if fmt else {"type": "text"}},
        reasoning=req.reasoning,
        store=req.store,
        metadata=req.metadata or {},
        user=req.user,
        **fields,
    )


def finished(finish_reason: str | None) -> dict[str, Any]:
    """Status fields for how generation ended: the token limit makes the response `incomplete`."""
    if finish_reason == "length":
        return {"status": "incomplete", "incomplete_details": IncompleteDetails(reason="max_output_tokens")}
    return {"status": "completed"}


def usage_of(prompt_tokens: int, completion_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def remember(
    store: ResponseStore, req: ResponsesRequest, response: ResponsesResponse, messages: list[dict[str, Any]]
) -> None:
    """Keep a finished response (with `store: true`) and the conversation a later request continues."""
    if req.store:
        store.put(response, [*messages, *output_messages(response.output)])


# ---------------------------------------------------------------- stream events


class EventWriter:
    """The typed events of one streamed response, numbered in order; the output items are kept for the end."""

    def __init__(self, response: ResponsesResponse):
        self.response = response
        self.items: list[OutputItem] = []
        self._open: OutputMessage | ReasoningOutput | None = None
        self._text: list[str] = []
        self._logprobs: list[OutputLogprob] = []
        self._seq = 0

    def event(self, type_: str, **payload: Any) -> Event:
        data = {"type": type_, **payload, "sequence_number": self._seq}
        self._seq += 1
        return data

    def _snapshot(self, **update: Any) -> dict[str, Any]:
        return self.response.model_copy(update=update).model_dump(mode="json")

    def start(self) -> list[Event]:
        snapshot = self._snapshot(status="in_progress")
        return [
            self.event("response.created", response=snapshot),
            self.event("response.in_progress", response=snapshot),
        ]

    def _where(self, item: Any) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": len(self.items) - 1}

    def _begin(self, item: OutputMessage | ReasoningOutput) -> list[Event]:
        self._open, self._text, self._logprobs = item, [], []
        self.items.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if isinstance(
            item, OutputMessage
        ) else {"type": "reasoning_text", "text": ""}  # fmt: skip
        added = item.model_copy(update={"status": "in_progress", "content": []}).model_dump(mode="json")
        return [
            self.event("response.output_item.added", output_index=len(self.items) - 1, item=added),
            self.event("response.content_part.added", **self._where(item), content_index=0, part=part),
        ]

    def reasoning(self, delta: str) -> list[Event]:
        events = [] if isinstance(self._open, ReasoningOutput) else [*self.close(), *self._begin(ReasoningOutput())]
        self._text.append(delta)
        assert self._open is not None
        return [*events, self.event("response.reasoning_text.delta", **self._where(self._open), content_index=0,
                                    delta=delta)]  # fmt: skip

    def text(self, delta: str, logprobs: list[OutputLogprob] | None = None) -> list[Event]:
        events = [] if isinstance(self._open, OutputMessage) else [*self.close(), *self._begin(OutputMessage())]
        self._text.append(delta)
        self._logprobs += logprobs or []
        assert self._open is not None
        payload = [lp.model_dump() for lp in logprobs or []]
        return [*events, self.event("response.output_text.delta", **self._where(self._open), content_index=0,
                                    delta=delta, logprobs=payload)]  # fmt: skip

    def function_call(self, call_id: str, name: str, arguments: str) -> list[Event]:
        events = self.close()
        item = FunctionCallOutput(call_id=call_id, name=name, arguments=arguments)
        self.items.append(item)
        added = item.model_copy(update={"status": "in_progress", "arguments": ""}).model_dump(mode="json")
        where = self._where(item)
        return [
            *events,
            self.event("response.output_item.added", output_index=where["output_index"], item=added),
            self.event("response.function_call_arguments.delta", **where, delta=arguments),
            self.event("response.function_call_arguments.done", **where, arguments=arguments),
            self.event("response.output_item.done", output_index=where["output_index"], item=item.model_dump()),
        ]

    def close(self, annotations: list[dict[str, Any]] | None = None) -> list[Event]:
        """End the open message or reasoning item (a message gets its `annotations` first)."""
        item, self._open = self._open, None
        if item is None:
            return []
        text, where = "".join(self._text), self._where(item)
        events: list[Event] = []
        if isinstance(item, OutputMessage):
            for n, annotation in enumerate(annotations or []):
                events.append(self.event("response.output_text.annotation.added", **where, content_index=0,
                                         annotation_index=n, annotation=annotation))  # fmt: skip
            part = OutputText(text=text, annotations=annotations or [], logprobs=self._logprobs)
            item.content = [part]
            events.append(self.event("response.output_text.done", **where, content_index=0, text=text,
                                     logprobs=[lp.model_dump() for lp in self._logprobs]))  # fmt: skip
            done_part = part.model_dump()
        else:
            item.content = [ReasoningText(text=text)]
            events.append(self.event("response.reasoning_text.done", **where, content_index=0, text=text))
            done_part = item.content[0].model_dump()
        events.append(self.event("response.content_part.done", **where, content_index=0, part=done_part))
        events.append(self.event("response.output_item.done", output_index=where["output_index"],
                                 item=item.model_dump()))  # fmt: skip
        return events

    def finish(self, **fields: Any) -> tuple[ResponsesResponse, list[Event]]:
        """Close what is open (an answer with no output at all still gets its empty message), then the end."""
        events = self.close()
        if not self.items:
            events += [*self.text(""), *self.close()]
        final = self.response.model_copy(update={"output": self.items, **fields})
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        return final, [*events, self.event(kind, response=final.model_dump(mode="json"))]

    def fail(self, exc: BaseException) -> list[Event]:
        """An `error` event, then `response.failed`."""
        status, body, _ = error_for(exc)
        return self.failed(body["error"], status)

    def failed(self, error: dict[str, Any], status: int = 500) -> list[Event]:
        """The same from an OpenAI error body's `error` (a stream's error event) and its HTTP status."""
        # The error event keeps our code; the response's error takes one of OpenAI's.
        kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_prompt"
        failed = self._snapshot(
            status="failed", output=self.items, error=ResponseError(code=kind, message=error["message"])
        )
        return [
            self.event("error", code=error.get("code") or kind, message=error["message"], param=error.get("param")),
            self.event("response.failed", response=failed),
        ]


# ---------------------------------------------------------------- the service


class ResponsesService:
    """`/v1/responses` over a chat backend, with its store of past responses."""

    def __init__(self, backend: ChatBackend, store: ResponseStore):
        self.backend, self.store = backend, store

    async def create(self, req: ResponsesRequest) -> ResponsesResponse | AsyncIterator[Event]:
        messages = conversation(req, self.store)
        if req.stream:
            chunks = await renamed(self.backend.chat_chunks(chat_request(req, messages, stream=True)))
            return self._stream(req, messages, chunks)
        result = await renamed(self.backend.chat(chat_request(req, messages, stream=False)))
        if not isinstance(result, ChatCompletionResponse):  # pragma: no cover - stream is False
            raise TypeError("expected a whole chat completion")
        choice = result.choices[0]
        items = output_items(choice.message, output_logprobs(choice.logprobs))
        usage = usage_of(result.usage.prompt_tokens, result.usage.completion_tokens)
        response = response_for(req, output=items, usage=usage, **finished(choice.finish_reason))
        remember(self.store, req, response, messages)
        return response

    async def _stream(
        self, req: ResponsesRequest, messages: list[dict[str, Any]], chunks: AsyncGenerator[ChatCompletionChunk, None]
    ) -> AsyncIterator[Event]:
        writer = EventWriter(response_for(req, status="in_progress"))
        for event in writer.start():
            yield event
        finish: str | None = None
        usage = usage_of(0, 0)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = usage_of(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        delta = choice.delta
                        events: list[Event] = []
                        if delta.reasoning:
                            events += writer.reasoning(delta.reasoning)
                        if delta.content:
                            events += writer.text(delta.content, output_logprobs(choice.logprobs))
                        for call in delta.tool_calls or []:
                            function = call.function or {}
                            events += writer.function_call(call.id or "", function.get("name", ""),
                                                           function.get("arguments", ""))  # fmt: skip
                        finish = choice.finish_reason or finish
                        for event in events:
                            yield event
        except Exception as exc:
            for event in writer.fail(exc):
                yield event
            return
        response, events = writer.finish(usage=usage, **finished(finish))
        remember(self.store, req, response, messages)
        for event in events:
            yield event
