"""Wire models of OpenAI's Responses API (`/v1/responses`), the subset this server runs.

Shapes follow openai-python's `types/responses` (`ResponseCreateParams`, `Response`, the output
items and stream events); the tests validate what the server sends against those very types.
Input: a string, or items: messages (text parts), `function_call`, `function_call_output`,
`reasoning` (read back as context, not re-rendered). Tools: `function` only. Unknown fields are
accepted and ignored, as OpenAI clients send many.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ..protocol import MAX_LOGPROBS, Seed, Stop, text_or_items


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- input items

TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


class ContentPart(_Lenient):
    """A part of a message's content; only text parts are supported (images and files are a 400)."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type == "refusal":
            self.text = str((self.model_extra or {}).get("refusal") or "")
        elif self.type not in TEXT_PARTS:
            raise ValueError(f"content part type '{self.type}' is not supported (text parts only)")
        elif self.text is None:
            raise ValueError(f"a '{self.type}' part needs text")
        return self


Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentPart], Tag("items")], Discriminator(text_or_items)
]


def content_text(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text or "" for p in content)


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: Content


class ReasoningInputItem(_Lenient):
    type: Literal["reasoning"]
    summary: list[ContentPart] = Field(default_factory=list)
    content: list[ContentPart] | None = None


def _item_type(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else "unknown"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningInputItem, Tag("reasoning")],
    Discriminator(_item_type, custom_error_type="unsupported_item", custom_error_message="unsupported input item type"),
]


Input = Annotated[
    Annotated[Annotated[str, Field(min_length=1)], Tag("text")]
    | Annotated[Annotated[list[InputItem], Field(min_length=1)], Tag("items")],
    Discriminator(text_or_items),
]


# ---------------------------------------------------------------- tools, text format


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(_Lenient):
    type: Literal["function"]
    name: str


class TextFormatText(_Lenient):
    type: Literal["text"]


class TextFormatJsonObject(_Lenient):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Lenient):
    model_config = ConfigDict(extra="allow", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64)] = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Lenient):
    format: (
        Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")] | None
    ) = None


class ResponsesRequest(_Lenient):
    model: str
    input: Input
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    store: bool = True
    stream: bool = False
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    include: list[str] | None = None
    truncation: Literal["disabled"] | None = Field(None, description="`auto` is not supported.")
    background: Literal[False] | None = Field(None, description="Background responses are not supported.")
    # vLLM's extensions
    seed: Seed | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    stop: Stop = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None

    @model_validator(mode="after")
    def _checks(self) -> ResponsesRequest:
        if isinstance(self.tool_choice, ToolChoiceFunction) or self.tool_choice == "required":
            if not self.tools:
                raise ValueError("tool_choice requires tools")
            if isinstance(self.tool_choice, ToolChoiceFunction) and self.tool_choice.name not in {
                t.name for t in self.tools
            }:
                raise ValueError(f"tool_choice names '{self.tool_choice.name}', which is not in tools")
        return self

    def wants_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or []) or bool(self.top_logprobs)


# ---------------------------------------------------------------- output items

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class TopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class OutputLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(
        default_factory=list, description="`rag:` models: one `file_citation` per cited source."
    )
    logprobs: list[OutputLogprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: new_id("msg"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "completed"
    content: list[OutputText] = Field(default_factory=list)


class FunctionCallOutput(BaseModel):
    id: str = Field(default_factory=lambda: new_id("fc"))
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningOutput(BaseModel):
    id: str = Field(default_factory=lambda: new_id("rs"))
    type: Literal["reasoning"] = "reasoning"
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: ItemStatus = "completed"


OutputItem = Annotated[OutputMessage | FunctionCallOutput | ReasoningOutput, Field(discriminator="type")]


# ---------------------------------------------------------------- the response


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponsesResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("resp"))
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["completed", "incomplete", "in_progress", "failed"] = "completed"
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: dict[str, Any] | None = None
    truncation: Literal["disabled"] = "disabled"
    store: bool = True
    background: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    usage: ResponseUsage | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
