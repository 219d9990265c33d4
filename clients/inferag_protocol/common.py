"""What the API families' wire models share: bounds, ids, the strict request base, the Retry-After header."""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# vLLM's own bounds for `seed`: an out-of-range seed can kill its engine core.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
MAX_LOGPROBS = 20


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def text_or_items(value: Any) -> str:
    """Tells `str | list` apart before validating, so that an error names the branch that was meant."""
    return "text" if isinstance(value, str) else "items"


class Strict(BaseModel):
    """A request that forbids unknown fields (a typo in `top_k` should not silently use the default)."""

    model_config = ConfigDict(extra="forbid")
