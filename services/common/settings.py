"""Settings shared by every service; each service subclasses with its own prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .auth import ApiKey

# Marks the settings of the listening process only (a service run inside the gateway does not listen).
_PER_PROCESS: dict[str, Any] = {"per_process": True}

S = TypeVar("S", bound="CommonSettings")


class CommonSettings(BaseSettings):
    # An empty variable (`INFERAG_GEN_MAX_MODEL_LEN=` in .env or compose) means "unset", not "".
    model_config = SettingsConfigDict(env_prefix="INFERAG_", env_file=".env", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address to bind.", json_schema_extra=_PER_PROCESS)
    port: int = Field(8000, description="Port to bind.", json_schema_extra=_PER_PROCESS)
    log_level: str = Field("info", description="Python logging level.")
    log_json: bool = Field(False, description="Log one JSON object per line instead of text.")
    data_dir: Path = Field(Path("data"), description="Where converted models and caches are kept.")
    shutdown_grace_s: int = Field(
        30, ge=0, description="On SIGTERM, seconds in-flight requests and streams get to finish before exit."
    )
    shutdown_drain_s: float = Field(
        0, ge=0, description="On SIGTERM, seconds /ready answers 503 while requests are still served (Kubernetes)."
    )
    api_key: SecretStr | None = Field(
        None, description="If set, every route but /health and /ready needs a key; this one has full access "
        "(and is the key services send each other)."
    )
    api_keys: list[ApiKey] | None = Field(
        None,
        description='Scoped keys, JSON: [{"name": "team-a", "key": "...", "collections": ["docs"], "write": false}]; '
        "collections null = all.",
    )
    rate_limit_rps: float | None = Field(
        None, gt=0, description="Requests per second per key (per client address without keys); 429 over it."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once before the rate applies.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body; 413 over it.")
    cors_origins: list[str] = Field(
        default_factory=list, description='Origins allowed by CORS, JSON list (e.g. ["https://app.example"]); '
        "empty: CORS closed."
    )

    def shared(self) -> dict[str, Any]:
        """The common settings given to this process (environment, .env, arguments) for the services it
        runs in-process: keys, limits, CORS, logging... hold for each of them, as every field declared
        here does unless marked per-process (where to listen)."""
        own = {n for n, f in CommonSettings.model_fields.items() if isinstance(f.json_schema_extra, dict)
               and f.json_schema_extra.get("per_process")}  # fmt: skip
        return {n: getattr(self, n) for n in CommonSettings.model_fields if n in self.model_fields_set - own}

    def inherit(self, service: type[S]) -> S:
        """`service`'s settings (its own prefix, `INFERAG_GEN_`...) with the common ones given to this process."""
        return service(**self.shared())
