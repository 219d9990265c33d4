"""The one interface every generation engine implements.

The serving layer renders chat templates and tokenizes; engines only turn prompt
token ids into a stream of new tokens. Both engines share the same tokenizer
(a Hugging Face one), so prompts, token counts and stop handling agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from services.common.errors import InvalidRequest

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling; validated by the serving layer before it gets here."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    # Number of top alternatives to return per token; None = no logprobs at all,
    # 0 = only the sampled token's logprob.
    logprobs: int | None = None
    # JSON schema the output must follow (json_object is the schema {"type": "object"}).
    json_schema: dict[str, Any] | None = None
    ignore_eos: bool = False
    # Logprobs of the prompt's own tokens (and this many alternatives each), on the first chunk;
    # None = not asked.
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)
    rank: int | None = None  # in the whole vocabulary, 1 = likeliest (prompt logprobs report it)


@dataclass
class GenerationChunk:
    """What an engine yields: the tokens and text produced since the last chunk."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    # The stop string that ended generation, if any (already cut from `text`).
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    # Asked with `SamplingOptions.prompt_logprobs`, on the first chunk: one per prompt token,
    # None for the first (nothing predicts it).
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class EngineStats:
    running: int
    waiting: int
    # Histogram of decode batch sizes seen since start: {batch_size: steps}.
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int
    engine: str
    root: str  # where the weights came from
    extra: dict[str, Any] = field(default_factory=dict)


def check_context_length(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, *, param: str = "messages", what: str = "The prompt"
) -> None:
    """InvalidRequest (400, `context_length_exceeded`) unless the prompt leaves at least one token to generate
    and, `max_tokens` given, the prompt plus `max_tokens` fits the context window. `param` names the prompt's
    field (`messages`, `prompt`, `input`), `what` the prompt in the message."""
    if prompt_tokens >= max_model_len:
        raise InvalidRequest(
            f"{what} is {prompt_tokens} tokens; this model's context window is {max_model_len} tokens.",
            param=param,
            code="context_length_exceeded",
        )
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        raise InvalidRequest(
            f"max_tokens is {max_tokens} and the prompt is {prompt_tokens} tokens; together they exceed "
            f"this model's context window of {max_model_len} tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )


@runtime_checkable
class Engine(Protocol):
    """A started engine. `generate` is an async iterator; cancelling it aborts."""

    info: ModelInfo
    supports_json_schema: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[GenerationChunk]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...
