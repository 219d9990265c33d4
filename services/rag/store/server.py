"""`Backend` on a Qdrant server through qdrant-client (the compose / Kubernetes path, several replicas)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import Conflict, InvalidRequest, NotFound, UpstreamUnavailable

from .backend import CollectionSpec, Fusion, Nearest, PayloadSchema, Point, Record, Selector, SparseVector

log = logging.getLogger(__name__)

# Collection metadata key holding the spec's own metadata.
META_KEY = "inferag"
_SCHEMAS: dict[str, models.PayloadSchemaType] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


def _vector(value: list[float] | SparseVector) -> list[float] | models.SparseVector:
    if isinstance(value, SparseVector):
        return models.SparseVector(indices=value.indices, values=value.values)
    return value


def _selector(selector: Selector) -> models.FilterSelector | models.PointIdsList:
    if isinstance(selector, models.Filter):
        return models.FilterSelector(filter=selector)
    return models.PointIdsList(points=list(selector))


def _record(point: models.Record | models.ScoredPoint) -> Record:
    dense: dict[str, list[float]] = {}
    sparse: dict[str, SparseVector] = {}
    if isinstance(point.vector, dict):
        for vector_name, value in point.vector.items():
            if isinstance(value, models.SparseVector):
                sparse[vector_name] = SparseVector(list(value.indices), list(value.values))
            elif isinstance(value, list) and (not value or isinstance(value[0], float | int)):
                dense[vector_name] = [float(x) for x in cast(list[float], value)]
    return Record(id=str(point.id), payload=point.payload or {}, score=getattr(point, "score", 0.0) or 0.0,
                  dense=dense, sparse=sparse)


class ServerBackend:
    """A Qdrant server at `url`; new collections get the cluster layout given (shards, replicas)."""

    kind: Literal["server"] = "server"

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: int = 10,
                 shard_number: int | None = None, replication_factor: int | None = None):
        self.location = url
        self._url, self._api_key, self._timeout_s = url.rstrip("/"), api_key, timeout_s
        # no version check: opening must not need the server; `list_collections()` does
        self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s, check_compatibility=False)
        self._layout = {k: v for k, v in (("shard_number", shard_number),
                                          ("replication_factor", replication_factor)) if v is not None}
        self._indexed: set[tuple[str, str]] = set()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A qdrant-client call, with its errors as domain errors."""
        try:
            return fn(*args, **kwargs)
        except (ResponseHandlingException, httpx.TransportError, ConnectionError) as exc:
            raise UpstreamUnavailable(f"The Qdrant server at {self.location} is unreachable: {exc}") from exc
        except UnexpectedResponse as exc:
            detail = exc.content.decode("utf-8", "replace")[:500] if exc.content else exc.reason_phrase
            if exc.status_code == 404:
                raise NotFound(f"Qdrant: {detail}") from exc
            if exc.status_code == 409:
                raise Conflict(f"Qdrant: {detail}") from exc
            if exc.status_code in (400, 422):
                raise InvalidRequest(f"Qdrant rejected the request: {detail}") from exc
            if exc.status_code in (401, 403):
                raise UpstreamUnavailable(f"Qdrant at {self.location} refused the API key: {detail}") from exc
            raise UpstreamUnavailable(f"Qdrant at {self.location} failed ({exc.status_code}): {detail}") from exc

    def list_collections(self) -> list[str]:
        return [c.name for c in self._call(self._client.get_collections).collections]

    def exists(self, name: str) -> bool:
        return bool(self._call(self._client.collection_exists, name))

    def spec(self, name: str) -> CollectionSpec | None:
        if not self.exists(name):
            return None
        config = self._call(self._client.get_collection, name).config
        raw = (config.metadata or {}).get(META_KEY)
        if not isinstance(raw, dict):
            return None
        vectors = config.params.vectors if isinstance(config.params.vectors, dict) else {}
        sparse = config.params.sparse_vectors or {}
        return CollectionSpec(
            dense={vector_name: params.size for vector_name, params in vectors.items()},
            sparse={vector_name: params.modifier == models.Modifier.IDF for vector_name, params in sparse.items()},
            metadata=raw.get("metadata", raw),
        )

    def create(self, name: str, spec: CollectionSpec) -> None:
        self._call(
            self._client.create_collection,
            name,
            vectors_config={n: models.VectorParams(size=d, distance=models.Distance.COSINE)
                            for n, d in spec.dense.items()},
            sparse_vectors_config={n: models.SparseVectorParams(modifier=models.Modifier.IDF if idf else None)
                                   for n, idf in spec.sparse.items()} or None,
            metadata={META_KEY: {"metadata": spec.metadata}},
            **self._layout,
        )

    def drop(self, name: str) -> None:
        self._call(self._client.delete_collection, name)
        self._indexed = {key for key in self._indexed if key[0] != name}

    def upsert(self, name: str, points: Sequence[Point], *, only_if: models.Filter | None = None,
               insert_only: bool = False) -> None:
        structs = [
            models.PointStruct(id=p.id, payload=p.payload,
                               vector={**p.dense, **{k: _vector(v) for k, v in p.sparse.items()}})
            for p in points
        ]
        self._call(self._client.upsert, name, points=structs, wait=True, update_filter=only_if,
                   update_mode=models.UpdateMode.INSERT_ONLY if insert_only else None)

    def delete(self, name: str, selector: Selector) -> None:
        self._call(self._client.delete, name, points_selector=_selector(selector), wait=True)

    def set_payload(self, name: str, payload: dict[str, Any], selector: Selector) -> None:
        points = selector if isinstance(selector, models.Filter) else list(selector)
        self._call(self._client.set_payload, name, payload=payload, points=points, wait=True)

    def retrieve(self, name: str, ids: Sequence[str], *, with_payload: bool | list[str] = True,
                 with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        found = self._call(self._client.retrieve, name, list(ids), with_payload=with_payload,
                           with_vectors=with_vectors)
        return [_record(r) for r in found]

    def scroll(self, name: str, *, filter: models.Filter | None = None, limit: int = 1024,
               offset: str | None = None, with_payload: bool | list[str] = True,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        page, after = self._call(self._client.scroll, name, scroll_filter=filter, limit=limit, offset=offset,
                                 with_payload=with_payload, with_vectors=with_vectors)
        return [_record(r) for r in page], None if after is None else str(after)

    def ordered(self, name: str, *, key: str, limit: int, offset: int = 0, filter: models.Filter | None = None,
                with_payload: bool | list[str] = True) -> list[Record]:
        response = self._call(self._client.query_points, name, query=models.OrderByQuery(order_by=key),
                              query_filter=filter, limit=limit, offset=offset, with_payload=with_payload)
        return [_record(p) for p in response.points]

    def count(self, name: str, filter: models.Filter | None = None) -> int:
        return int(self._call(self._client.count, name, count_filter=filter, exact=True).count)

    def query(self, name: str, searches: Sequence[Nearest], *, fusion: Fusion | None = None, limit: int,
              filter: models.Filter | None = None, score_threshold: float | None = None,
              with_payload: bool | list[str] = True) -> list[Record]:
        common: dict[str, Any] = {"query_filter": filter, "limit": limit, "with_payload": with_payload,
                                  "score_threshold": score_threshold}
        if fusion is None:
            (search,) = searches
            response = self._call(self._client.query_points, name, query=_vector(search.vector),
                                  using=search.using, **common)
        else:
            prefetch = [models.Prefetch(query=_vector(s.vector), using=s.using, limit=limit * 4, filter=filter)
                        for s in searches]
            method = models.Fusion.RRF if fusion == "rrf" else models.Fusion.DBSF
            response = self._call(self._client.query_points, name, prefetch=prefetch,
                                  query=models.FusionQuery(fusion=method), **common)
        return [_record(p) for p in response.points]

    def index(self, name: str, field: str, schema: PayloadSchema) -> None:
        if (name, field) in self._indexed:
            return
        try:
            self._client.create_payload_index(name, field, field_schema=_SCHEMAS[schema], wait=True)
        except UnexpectedResponse as exc:  # e.g. indexed before with another type: filtering still works
            log.warning("payload index %s.%s (%s) not created: %s", name, field, schema, exc)
        self._indexed.add((name, field))

    def snapshot(self, name: str, target: Path) -> None:
        """The server's own shard snapshot (one shard per collection, the layout inferag creates)."""
        description = self._call(self._client.create_shard_snapshot, name, 0, wait=True)
        headers = {"api-key": self._api_key} if self._api_key else {}
        url = f"{self._url}/collections/{name}/shards/0/snapshots/{description.name}"
        try:
            with httpx.stream("GET", url, headers=headers, timeout=self._timeout_s * 30) as resp:
                resp.raise_for_status()
                with open(target, "wb") as out:
                    for block in resp.iter_bytes():
                        out.write(block)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"Could not download the snapshot of '{name}' from {self.location}: {exc}") \
                from exc
        finally:
            try:
                self._client.delete_shard_snapshot(name, 0, description.name, wait=False)
            except Exception:  # a leftover snapshot on the server is only disk space
                log.warning("could not delete the server snapshot %s of %s", description.name, name)

    def optimize(self, name: str) -> bool:
        return False  # the server's optimizers run on their own

    def close(self) -> None:
        self._client.close()


