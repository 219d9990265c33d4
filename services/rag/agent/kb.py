"""What the agent needs from the knowledge base; the RAG service's retrieval implements it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from inferag_protocol.rag import CollectionInfo, DocumentInfo, Hit, StoredChunk


class KnowledgeBase(Protocol):
    async def search(self, query: str, collections: list[str], top_k: int) -> list[Hit]:
        """Retrieve and rerank; best first."""
        ...

    async def get_document(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]]:
        """A document and its chunks in order; raises `services.common.errors.NotFound`."""
        ...

    async def list_collections(self) -> list[CollectionInfo]: ...

    async def embed(self, texts: Sequence[str]) -> Sequence[Any]:
        """One embedding per text (sentence selection and quotes)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`, as the context budget counts them."""
        ...
