"""Settings of the gateway (environment prefix `INFERAG_`) and of the services it runs in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from services.common.settings import CommonSettings
from services.embeddings.settings import EmbeddingsSettings
from services.generation.settings import GenerationSettings
from services.rag.settings import RagSettings

from .models import load_models_file, parse_extra_models, parse_model_urls


class InProcessSettings(NamedTuple):
    """The settings of the services the gateway runs in its own process."""

    generation: GenerationSettings
    embeddings: EmbeddingsSettings
    rag: RagSettings


class GatewaySettings(CommonSettings):
    """`INFERAG_HOST`, `INFERAG_PORT`, `INFERAG_API_KEY`, ...; each service reads its own prefix too."""

    generation_url: str | None = Field(None, description="Forward generation routes there instead of in-process.")
    embeddings_url: str | None = Field(None, description="Forward embeddings routes there instead of in-process.")
    rag_url: str | None = Field(None, description="Forward /rag/* (and rag: models) there instead of in-process.")
    generation_urls: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="More generation models, each served by its own service: `name=url,name=url` or a JSON "
        "object; requests go to the service of their `model`.",
    )
    models_file: Path | None = Field(None, description="The same as a YAML/JSON file: `{name: url}`.")
    gen_extra_models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="In-process only: more models loaded next to the default one, `name=model,...` (model: a "
        "folder, a .gguf, a hub id or the packaged default), each with the default's INFERAG_GEN_* settings.",
    )

    @field_validator("generation_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> dict[str, str]:
        return parse_model_urls(value)

    @field_validator("gen_extra_models", mode="before")
    @classmethod
    def _extra(cls, value: Any) -> dict[str, str]:
        return parse_extra_models(value)

    def model_urls(self) -> dict[str, str]:
        """Model name → generation service URL, from the file then the variable."""
        return {**(load_models_file(self.models_file) if self.models_file else {}), **self.generation_urls}

    def in_process(self) -> InProcessSettings:
        """Each in-process service's settings: its own prefix (`INFERAG_GEN_`, ...) plus every common setting
        this gateway was given (`shared()`: each of CommonSettings' fields but where to listen)."""
        return InProcessSettings(self.inherit(GenerationSettings), self.inherit(EmbeddingsSettings),
                                 self.inherit(RagSettings))  # fmt: skip
