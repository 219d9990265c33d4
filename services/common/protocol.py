"""Wire fields every service's `/v1/models` card shares (OpenAI's model object)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field


class ModelCardBase(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "inferag"
    root: str | None = None
