"""The orchestrator's vector store: Qdrant's engine, on a server or embedded in the process.

- `backend.py`: the store protocol (`Backend`), its two implementations in `server.py`
  (qdrant-client against `QDRANT_URL`) and `embedded.py` (qdrant-edge, a shard folder per collection);
- `filters.py`: metadata filters as Qdrant conditions;
- `documents.py`: the write-ahead document protocol (stage, compare-and-set commit, publish);
- `search.py`, `recovery.py`, `snapshots.py` (snapshot files, migration of the previous version's folder);
- `vector_store.py`: `VectorStore`, what the rest of the service uses, and `open_store`.
"""

from .backend import Point, Record, StoreLocked, StoreNeedsMigration
from .documents import REGISTRY_PREFIX, chunk_point_id, document_point_id, new_version, registry_name
from .embedded import check_folder_free
from .filters import LIVE, STAGED, filter_conditions
from .vector_store import DocumentWrite, VectorStore, hidden_name, open_store, validate_collection_name

__all__ = [
    "LIVE",
    "REGISTRY_PREFIX",
    "STAGED",
    "DocumentWrite",
    "Point",
    "Record",
    "StoreLocked",
    "StoreNeedsMigration",
    "VectorStore",
    "check_folder_free",
    "chunk_point_id",
    "document_point_id",
    "filter_conditions",
    "hidden_name",
    "new_version",
    "open_store",
    "registry_name",
    "validate_collection_name",
]
