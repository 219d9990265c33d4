"""Snapshot files of a collection, and the migration of a previous version's store folder.

A snapshot is a gzipped tar of Qdrant shard snapshots, the engine's own format, one per collection of the
set (the collection, its document registry, its other hidden companions), and a manifest:

    inferag-snapshot.json        {"format": 1, "collection": ..., "parts": {"": spec, "_docs__": spec, ...}}
    parts/<kind>.snapshot        a shard snapshot ("" is the collection itself: parts/collection.snapshot)

Each part unpacks with `qdrant_edge.EdgeShard.unpack_snapshot`, and is what a Qdrant server takes
at `POST /collections/{name}/shards/0/snapshots/upload` (and produces at
`POST /collections/{name}/shards/0/snapshot`).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.errors import InvalidRequest

from .backend import CollectionSpec, Point, Record

log = logging.getLogger(__name__)

MANIFEST = "inferag-snapshot.json"
FORMAT = 1
COPY_BATCH = 256


def part_file(kind: str) -> str:
    return f"parts/{kind or 'collection'}.snapshot"


def spec_json(spec: CollectionSpec) -> dict[str, Any]:
    return {"dense": spec.dense, "sparse": spec.sparse, "metadata": spec.metadata}


def spec_from_json(raw: dict[str, Any]) -> CollectionSpec:
    return CollectionSpec(dense={k: int(v) for k, v in raw["dense"].items()},
                          sparse={k: bool(v) for k, v in raw.get("sparse", {}).items()},
                          metadata=raw.get("metadata", {}))


def write_snapshot(target: Path, collection: str, parts: dict[str, tuple[CollectionSpec, Path]]) -> None:
    """The snapshot file of `collection` from its parts' shard snapshots (kind -> (spec, shard snapshot))."""
    manifest = {"format": FORMAT, "collection": collection, "created_at": time.time(),
                "parts": {kind: spec_json(spec) for kind, (spec, _) in parts.items()}}
    # gzip: the engine's files are preallocated (mostly holes and zeros); level 1 keeps it fast
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for kind, (_, shard) in parts.items():
            tar.add(shard, part_file(kind))


def snapshot_collection_name(source: Path) -> str:
    """The collection a snapshot file holds (read from its manifest only)."""
    try:
        with tarfile.open(source) as tar:
            manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, KeyError, AttributeError, ValueError):
        raise InvalidRequest("Not an inferag snapshot: it has no manifest.", param="file") from None
    name = manifest.get("collection") if isinstance(manifest, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest("Not an inferag snapshot: its manifest names no collection.", param="file")
    return name


@contextmanager
def opened_snapshot(source: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """The manifest of a snapshot file and the folder its parts are extracted to (removed after)."""
    try:
        tar = tarfile.open(source)  # noqa: SIM115 -- closed below, once the parts are out
    except (tarfile.TarError, OSError) as exc:
        raise InvalidRequest(f"Not an inferag snapshot: {exc}", param="file") from None
    with tempfile.TemporaryDirectory(prefix="inferag-restore-", dir=source.parent) as folder:
        with tar:
            try:
                manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
            except (KeyError, AttributeError, ValueError):
                raise InvalidRequest("Not an inferag snapshot: it has no manifest.", param="file") from None
            if manifest.get("format") != FORMAT or not isinstance(manifest.get("parts"), dict):
                raise InvalidRequest(f"Unsupported snapshot format {manifest.get('format')!r}.", param="file")
            names = {part_file(kind) for kind in manifest["parts"]}
            members = [m for m in tar.getmembers() if m.name in names and m.isfile()]
            if {m.name for m in members} != names:
                raise InvalidRequest("The snapshot is incomplete: a part is missing.", param="file")
            tar.extractall(folder, members=members, filter="data")
        yield manifest, Path(folder)


def copy_points(read_page: Any, write: Any) -> int:
    """Copy every point, vectors and payload: `read_page(offset) -> (records, next)`, `write(points)`."""
    copied = 0
    offset: str | None = None
    while True:
        records, offset = read_page(offset)
        if records:
            write([_point(r) for r in records])
            copied += len(records)
        if offset is None:
            return copied


def _point(record: Record) -> Point:
    return Point(id=record.id, payload=record.payload, dense=record.dense, sparse=record.sparse)


# -- migration from qdrant-client's local mode ---------------------------------------------------------------


def local_mode_specs(client: Any) -> dict[str, CollectionSpec]:
    """Every collection of a qdrant-client local-mode folder, as a spec."""
    from qdrant_client import models

    specs = {}
    for description in client.get_collections().collections:
        config = client.get_collection(description.name).config
        vectors = config.params.vectors if isinstance(config.params.vectors, dict) else {}
        sparse = config.params.sparse_vectors or {}
        raw = (config.metadata or {}).get("inferag")
        specs[description.name] = CollectionSpec(
            dense={n: p.size for n, p in vectors.items()},
            sparse={n: p.modifier == models.Modifier.IDF for n, p in sparse.items()},
            metadata=raw if isinstance(raw, dict) else {"hidden": True},
        )
    return specs


def migrate_local_mode(root: Path, log_line: Any = print) -> dict[str, int]:
    """Copy a local-mode folder into the embedded engine, verify every count, then swap the folders.

    The old folder is kept beside the new one (`<root>.local-mode-backup-<time>`); returns
    collection -> points copied. Raises `StoreLocked` while a process has the folder open.
    """
    from qdrant_client import QdrantClient

    from .backend import StoreLocked
    from .embedded import EmbeddedBackend

    root = root.expanduser().resolve()
    staging = root.with_name(f"{root.name}.migrating")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        client = QdrantClient(path=str(root))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise StoreLocked(root) from exc
        raise
    copied: dict[str, int] = {}
    try:
        specs = local_mode_specs(client)
        target = EmbeddedBackend(staging)
        try:
            for name, spec in specs.items():
                target.create(name, spec)

                def read_page(offset: Any, name: str = name) -> tuple[list[Record], Any]:
                    page, after = client.scroll(name, limit=COPY_BATCH, offset=offset, with_payload=True,
                                                with_vectors=True)
                    return [_local_record(r) for r in page], after

                copied[name] = copy_points(read_page, lambda points, name=name: target.upsert(name, points))
                expected = client.count(name, exact=True).count
                if target.count(name) != expected or copied[name] != expected:
                    raise RuntimeError(f"Migration of '{name}' copied {copied[name]} of {expected} points; "
                                       "nothing was changed.")
                log_line(f"{name}: {copied[name]} points")
        finally:
            target.close()
    finally:
        client.close()
    backup = root.with_name(f"{root.name}.local-mode-backup-{time.strftime('%Y%m%d-%H%M%S')}")
    root.rename(backup)
    staging.rename(root)
    log_line(f"the previous store is kept in {backup}")
    return copied


def _local_record(record: Any) -> Record:
    from .server import _record

    return _record(record)
