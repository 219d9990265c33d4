"""Settings of the RAG orchestrator (environment prefix `INFERAG_RAG_`, Qdrant's own `QDRANT_*`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from inferag_protocol.graph import GraphMode
from inferag_protocol.rag import ContextMode
from services.common.settings import CommonSettings
from services.common.upstream import Retry


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
        None,
        description="Folder of the embedded store (Qdrant's engine, a shard folder per collection; one process "
        "at a time); default <data_dir>/qdrant; ':memory:' a temporary one.",
    )
    store_recover_interval: float = Field(
        60, ge=0, description="Seconds between background recoveries of interrupted writes (0: only at start)."
    )
    store_optimize_idle: float = Field(
        10, ge=0, description="Embedded: build a collection's HNSW index once it has had no write for this long."
    )
    store_optimize_min_points: int = Field(
        20_000, ge=0, description="Embedded: ... and has at least this many unindexed points (fewer: brute force)."
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
    upstream_retries: int = Field(
        3, ge=0, le=10,
        description="Retries of a call to the embeddings or generation service refused with 429/503 (or not "
        "reached); generation is retried only when it had not started. Backoff with jitter, Retry-After obeyed.",
    )  # fmt: skip
    upstream_retry_max_wait: float = Field(
        10, gt=0, description="Longest wait before a retry, in seconds; an upstream asking for longer is not retried."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body (uploads): 413 over.")
    background_threshold_bytes: int = Field(
        1024 * 1024, ge=0, description="Ingestion requests larger than this run as a background job (202)."
    )
    max_jobs: int = Field(4, ge=1, description="Ingestion jobs running at once; more are queued.")
    max_queued_jobs: int = Field(64, ge=0, description="Jobs waiting to run before 429.")
    chunk_strategy: str = Field("recursive", description="Default chunking strategy (markdown documents: markdown).")
    chunk_size: int = Field(200, ge=16, description="Default chunk size in embedding-model tokens.")
    chunk_overlap: int = Field(30, ge=0, description="Default overlap in tokens (overlap and recursive strategies).")
    context_mode: ContextMode = Field(
        "chunks",
        description="What an answer's prompt shows of each source: `chunks` (whole chunks, best first, while the "
        "budget lasts) or `sentences` (the sentences closest to the question, with their neighbours, in document "
        "order). `chunks` answered better and sooner on the held-out sets with the packaged model (README).",
    )
    context_tokens: int = Field(
        300, ge=32, description="Token budget of the sources in an answer's prompt (embedding-model tokens)."
    )
    answer_max_tokens: int = Field(
        256, ge=1, description="Longest answer of /rag/query and rag: chat when the request gives no max_tokens."
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
    responses_store_size: int = Field(
        1000, ge=0, description="`rag:` responses kept for `previous_response_id` and GET /v1/responses/{id}."
    )
    responses_store_mib: float = Field(64, gt=0, description="Most memory (MiB of JSON) those responses may take.")
    agent_tool_time_limit: float = Field(
        10, gt=0, description="Seconds one agent tool call may take (it then answers with an error observation)."
    )
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

    # ---- parsing (services/rag/parsing): bounds, OCR, web pages
    max_expanded_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="Most bytes an uploaded archive (.docx .xlsx .epub...) may unpack to: 413 over (zip bombs).",
    )
    max_document_chars: int = Field(20_000_000, ge=1000, description="Most characters of text one file may yield: 413.")
    max_document_pages: int = Field(2000, ge=1, description="Most pages (PDF) or slides one file may have: 413.")
    max_records: int = Field(
        100_000, ge=1, description="Most records of a JSON/CSV file, parts of an archive, attachments of a mail: 413."
    )
    table_rows: int = Field(
        20,
        ge=1,
        description="Tables with more rows are written row by row, each row naming its columns (chunks "
        "of a long sheet keep their header).",
    )
    ocr: bool = Field(True, description="OCR the PDF pages without a text layer, and image files.")
    ocr_engine: Literal["auto", "tesseract", "rapidocr"] = Field(
        "auto", description="auto: Tesseract when installed (tesseract-ocr + language data), else RapidOCR."
    )
    ocr_languages: str = Field("fra+eng", description="Tesseract languages, first preferred (e.g. 'eng', 'fra+eng').")
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution PDF pages are rendered at for OCR.")
    ocr_max_pages: int = Field(200, ge=1, description="Most pages of one file to OCR: 413 over.")
    ocr_workers: int = Field(1, ge=1, description="Pages OCR'd at once across the service (one core each).")
    max_image_pixels: int = Field(60_000_000, ge=1, description="Largest image (width x height) to OCR: 413 over.")
    fetch_allow_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) where URL documents may point although they are not public (loopback, private, "
        "link-local), e.g. '[\"10.0.0.0/8\"]'; empty: only public addresses are fetched (SSRF guard).",
    )
    fetch_timeout: float = Field(20, gt=0, description="Seconds a URL document's fetch may take, redirects included.")
    fetch_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest page a URL document may be: 413.")
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects followed per URL document (each hop checked).")

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad one
        return value

    def store_path(self) -> str:
        return self.qdrant_path or str(Path(self.data_dir) / "qdrant")

    def upstream_retry(self) -> Retry:
        return Retry(attempts=self.upstream_retries + 1, max_wait_s=self.upstream_retry_max_wait)

    def upstream_key(self) -> str | None:
        key = self.upstream_api_key or self.api_key
        return key.get_secret_value() if key else None
