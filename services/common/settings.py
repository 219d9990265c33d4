"""Settings shared by every service; each service subclasses with its own prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    # An empty variable (`INFERAG_GEN_MAX_MODEL_LEN=` in .env or compose) means "unset", not "".
    model_config = SettingsConfigDict(env_prefix="INFERAG_", env_file=".env", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    log_level: str = Field("info", description="Python logging level.")
    log_json: bool = Field(False, description="Log one JSON object per line instead of text.")
    data_dir: Path = Field(Path("data"), description="Where converted models and caches are kept.")
    shutdown_grace_s: int = Field(
        30, ge=0, description="On SIGTERM, seconds in-flight requests and streams get to finish before exit."
    )
    api_key: SecretStr | None = Field(None, description="If set, every route but /health and /ready needs it.")
