"""Settings of the RAG orchestrator (environment prefix `INFERAG_RAG_`, Qdrant's own `QDRANT_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings

from .graph.types import GraphMode


class RagSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INFERAG_RAG_", env_file=".env", extra="ignore")

    port: int = Field(8002, description="Port to bind.")
    qdrant_url: str | None = Field(
        None,
        validation_alias=AliasChoices("QDRANT_URL", "INFERAG_RAG_QDRANT_URL"),
        description="Qdrant server URL (compose, Kubernetes); unset: embedded Qdrant in `qdrant_path`.",
    )
    qdrant_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QDRANT_API_KEY", "INFERAG_RAG_QDRANT_API_KEY"), description="Qdrant key."
    )
    qdrant_shard_number: int | None = Field(
        None, ge=1, description="Shards of each new collection on a Qdrant cluster (server default: one per node)."
    )
    qdrant_replication_factor: int | None = Field(
        None, ge=1, description="Copies of each shard on a Qdrant cluster (server default: 1)."
    )
    qdrant_path: str | None = Field(
        None, description="Folder of the embedded store (one process at a time); default <data_dir>/qdrant; ':memory:'."
    )
    embeddings_url: str | None = Field(
        None, description="Embeddings service URL (e.g. http://embeddings:8001); unset: its models in this process."
    )
    generation_url: str | None = Field(
        None, description="Generation service URL (e.g. http://generation:8000); unset: the engine in this process."
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="Key sent to the embeddings and generation services; default: `api_key`."
    )
    generation_model: str | None = Field(None, description="Served model that answers; default: the first listed.")
    upstream_timeout: float = Field(300, gt=0, description="Seconds a call to an upstream service may take.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body (uploads): 413 over.")
    background_threshold_bytes: int = Field(
        1024 * 1024, ge=0, description="Ingestion requests larger than this run as a background job (202)."
    )
    max_jobs: int = Field(4, ge=1, description="Ingestion jobs running at once; more are queued.")
    max_queued_jobs: int = Field(64, ge=0, description="Jobs waiting to run before 429.")
    chunk_strategy: str = Field("recursive", description="Default chunking strategy (markdown documents: markdown).")
    chunk_size: int = Field(200, ge=16, description="Default chunk size in embedding-model tokens.")
    chunk_overlap: int = Field(30, ge=0, description="Default overlap in tokens (overlap and recursive strategies).")
    context_chars: int = Field(
        4000, ge=200, description="Most characters of sources put in an answer's prompt (fits small context windows)."
    )
    min_score: float | None = Field(
        None,
        description="Default score threshold of /rag/query: sources scoring under it are dropped, and with none "
        "left the answer says it does not know. Compared with the rerank score when reranking, else the retrieval's.",
    )
    agent_native_tools: bool = Field(
        False,
        description="The agent uses OpenAI tool calling (protocol auto → native); off: the ReAct text protocol, "
        "which small models follow better.",
    )
    agent_time_limit: float = Field(120, gt=0, description="Wall-clock seconds an agent run may take.")
    agent_max_observation_chars: int = Field(4000, ge=200, description="Cap on a tool result fed back to the model.")
    graph_default: GraphMode = Field(
        "keyphrase",
        description="Knowledge graph of a collection created without saying (`graph` at creation): off, keyphrase "
        "(model-free) or llm (extraction by the generation model).",
    )
    graph_keyphrases: int = Field(8, ge=0, le=64, description="Keyphrases taken per chunk by the keyphrase extractor.")
    graph_hops: int = Field(2, ge=0, le=3, description="Relations walked from the entities a query matches.")
    graph_seeds: int = Field(8, ge=0, le=100, description="Entities matched to a query by vector (beside name).")
    graph_llm_model: str | None = Field(None, description="Model of the llm extractor; default: the answering one.")
    graph_llm_concurrency: int = Field(4, ge=1, description="Chunks the llm extractor sends at once.")
    graph_llm_max_tokens: int = Field(1024, ge=64, description="Reply budget of one llm extraction.")

    def store_path(self) -> str:
        return self.qdrant_path or str(Path(self.data_dir) / "qdrant")

    def upstream_key(self) -> str | None:
        key = self.upstream_api_key or self.api_key
        return key.get_secret_value() if key else None
