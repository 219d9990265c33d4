"""What the API families' wire models share: bounds, ids, the strict request base."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# vLLM's own bounds for `seed`: an out-of-range seed can kill its engine core.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
MAX_LOGPROBS = 20


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def text_or_items(value: Any) -> str:
    """Tells `str | list` apart before validating, so that an error names the branch that was meant."""
    return "text" if isinstance(value, str) else "items"


class Strict(BaseModel):
    """A request that forbids unknown fields (a typo in `top_k` should not silently use the default)."""

    model_config = ConfigDict(extra="forbid")
