"""Wire models of `/v1/perplexity`: per-token logprobs and perplexity of texts under a generation model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .common import MAX_LOGPROBS, text_or_items

PerplexityText = Annotated[str, Field(min_length=1)]


class PerplexityRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # as the OpenAI routes: unknown fields are ignored

    model: str
    input: Annotated[
        Annotated[PerplexityText, Tag("text")]
        | Annotated[Annotated[list[PerplexityText], Field(min_length=1, max_length=64)], Tag("items")],
        Discriminator(text_or_items),
    ]
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = Field(
        None, description="Also return this many likeliest tokens at each position."
    )
    add_special_tokens: bool = Field(True, description="Add the tokenizer's special tokens (BOS...) first.")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class PerplexityData(BaseModel):
    object: Literal["perplexity"] = "perplexity"
    index: int
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="None for the first token: nothing predicts it.")
    top_logprobs: list[dict[str, float] | None] | None = None
    logprob: float = Field(description="Sum of the token logprobs (the first token left out).")
    nll: float = Field(description="Mean negative logprob per scored token, in nats.")
    perplexity: float = Field(description="exp(nll).")


class PerplexityUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class PerplexityResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[PerplexityData]
    usage: PerplexityUsage
