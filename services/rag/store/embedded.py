"""`Backend` embedded in the process: Qdrant's own engine (qdrant-edge), one shard folder per collection.

    <root>/.lock                 held by the one process that has the store open
    <root>/<collection>/         an EdgeShard (segments/, wal/, edge_config.json) and inferag.json (its spec)

A collection appears by a rename of a finished folder and disappears by a rename to a hidden
trash folder, so a crash never leaves half a collection; the engine's write-ahead log makes each
update durable once `update()` returns (a killed process loses nothing it acknowledged).

Thread safety is the engine's: shards take calls from several threads at once. Measured here
(`bench/store.py`), its Python binding holds the GIL while it works, so threads do not search in
parallel. Its `optimize()` (the HNSW build: a minute for 20,000 points on this machine) would hold
the GIL just as long and freeze every thread of the process, the event loop included, so `optimize`
runs the engine's optimizers in a child process on a copy of the shard and swaps the optimized copy
in (a rename, while no call uses the shard); a write meanwhile wins and the copy is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast

import portalocker
import qdrant_edge as qe
from qdrant_client import models

from services.common.errors import Conflict, InvalidRequest, NotFound

from .backend import (
    CollectionSpec,
    Fusion,
    Nearest,
    PayloadSchema,
    Point,
    Record,
    Selector,
    SparseVector,
    StoreLocked,
    StoreNeedsMigration,
)

log = logging.getLogger(__name__)

SPEC_FILE = "inferag.json"
RRF_K = 2
LOCK_FILE = ".lock"
_TMP, _TRASH, _OPTIMIZED = ".tmp-", ".trash-", ".optimized-"
# The child process of `EmbeddedBackend.optimize`: the engine's optimizers on a copy of a shard, at a lower
# CPU priority than the serving process.
_OPTIMIZE_CHILD = (
    "import os, sys\n"
    "import qdrant_edge as qe\n"
    "os.nice(10)\n"
    "shard = qe.EdgeShard.load(sys.argv[1])\n"
    "changed = shard.optimize()\n"
    "shard.close()\n"
    "print(int(changed))\n"
)
_SCHEMAS = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


def is_local_mode_folder(root: Path) -> bool:
    """A folder written by qdrant-client's local mode (the previous embedded store): meta.json + collection/."""
    return (root / "meta.json").is_file() and (root / "collection").is_dir()


# -- qdrant-client models -> qdrant-edge -------------------------------------------------------------------


# qdrant-edge 0.9's Python binding reads `MatchValue(True)` as the integer 1, which matches no JSON
# boolean: bools are mirrored as keywords under BOOLS ("true"/"false") on write, filtered there, and
# left out of what is read back.
BOOLS = "_bool"


def _mirror_bools(payload: dict[str, Any]) -> dict[str, Any]:
    """The booleans of `payload` (nested objects included) as keywords, at the same paths."""
    mirror: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, bool):
            mirror[key] = "true" if value else "false"
        elif isinstance(value, dict) and key != BOOLS:
            nested = _mirror_bools(value)
            if nested:
                mirror[key] = nested
    return mirror


def _with_bools(payload: dict[str, Any]) -> dict[str, Any]:
    mirror = _mirror_bools(payload)
    return {**payload, BOOLS: mirror} if mirror else payload


def _match(match: Any) -> Any:
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(cast(Any, list(match.any)))
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(cast(Any, list(match.except_)))
    raise InvalidRequest(f"Unsupported match in the embedded store: {type(match).__name__}.", param="filter")


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return edge_filter(condition)
    if isinstance(condition, models.FieldCondition):
        if isinstance(condition.match, models.MatchValue) and isinstance(condition.match.value, bool):
            return qe.FieldCondition(key=f"{BOOLS}.{condition.key}",
                                     match=qe.MatchValue("true" if condition.match.value else "false"))
        if condition.match is not None:
            return qe.FieldCondition(key=condition.key, match=_match(condition.match))
        if condition.range is not None:
            r = cast(Any, condition.range)
            return qe.FieldCondition(key=condition.key, range=qe.RangeFloat(
                gte=None if r.gte is None else float(r.gte), gt=None if r.gt is None else float(r.gt),
                lte=None if r.lte is None else float(r.lte), lt=None if r.lt is None else float(r.lt)))
        if condition.is_empty is not None:
            return qe.FieldCondition(key=condition.key, is_empty=condition.is_empty)
        if condition.is_null is not None:
            return qe.FieldCondition(key=condition.key, is_null=condition.is_null)
    if isinstance(condition, models.HasIdCondition):
        return qe.HasIdCondition({str(i) for i in condition.has_id})
    if isinstance(condition, models.IsEmptyCondition):
        return qe.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return qe.IsNullCondition(condition.is_null.key)
    raise InvalidRequest(f"Unsupported condition in the embedded store: {type(condition).__name__}.", param="filter")


def _conditions(conditions: Any) -> list[Any] | None:
    if conditions is None:
        return None
    if not isinstance(conditions, list):
        conditions = [conditions]
    return [_condition(c) for c in conditions]


def edge_filter(flt: models.Filter | None) -> qe.Filter | None:
    """A qdrant-client filter as the embedded engine's (the conditions the store uses)."""
    if flt is None:
        return None
    return _edge_filter(flt)


def _edge_filter(flt: models.Filter) -> qe.Filter:
    return qe.Filter(must=_conditions(flt.must), should=_conditions(flt.should), must_not=_conditions(flt.must_not))


def _edge_vector(value: list[float] | SparseVector) -> Any:
    if isinstance(value, SparseVector):
        return qe.SparseVector(indices=value.indices, values=value.values)
    return value


def _edge_point(point: Point) -> qe.Point:
    vector: dict[str, Any] = dict(point.dense)
    for vector_name, sparse in point.sparse.items():
        vector[vector_name] = qe.SparseVector(indices=sparse.indices, values=sparse.values)
    return qe.Point(id=point.id, vector=vector, payload=_with_bools(point.payload))


def _record(point: Any) -> Record:
    dense: dict[str, list[float]] = {}
    sparse: dict[str, SparseVector] = {}
    vector = point.vector
    if isinstance(vector, dict):
        for vector_name, value in vector.items():
            if isinstance(value, qe.SparseVector):
                sparse[vector_name] = SparseVector(list(value.indices), list(value.values))
            elif isinstance(value, list):
                dense[vector_name] = value
    payload = point.payload or {}
    payload.pop(BOOLS, None)
    return Record(id=str(point.id), payload=payload, score=float(getattr(point, "score", 0.0) or 0.0),
                  dense=dense, sparse=sparse)


def _with_payload(with_payload: bool | list[str]) -> Any:
    return qe.PayloadSelector.Include(with_payload) if isinstance(with_payload, list) else with_payload


def _edge_error(exc: Exception, name: str) -> Exception:
    """The engine raises plain `Exception`s with a message: the known ones as domain errors."""
    text = str(exc)
    if "Wrong input" in text or "Bad input" in text or "Validation" in text:
        return InvalidRequest(f"The embedded store refused the request: {text}")
    return exc


class _SharedExclusive:
    """Many holders at once, or one alone: shard calls share, the swap of an optimized shard excludes them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Any:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Any:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True  # new shared holders wait from here on
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class EmbeddedBackend:
    """Collections as qdrant-edge shards under `root` (`":memory:"`: a temporary folder, removed at close)."""

    kind: Literal["embedded"] = "embedded"

    def __init__(self, root: str | Path):
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if str(root) == ":memory:":
            self._temporary = tempfile.TemporaryDirectory(prefix="inferag-store-")
            root = self._temporary.name
        self.root = Path(root).expanduser().resolve()
        self.location = ":memory:" if self._temporary else str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock(self.root)
        if is_local_mode_folder(self.root):
            self._unlock()
            raise StoreNeedsMigration(self.root)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._specs: dict[str, CollectionSpec] = {}
        self._guard = threading.RLock()  # opening, creating and dropping shards
        self._swap = _SharedExclusive()  # every shard call shares it; swapping an optimized shard in excludes
        self._writer = threading.Lock()  # held by every update, and while a shard is copied for `optimize`
        self._writes: dict[str, int] = {}  # collection -> updates so far (a write during `optimize` wins)
        self._closed = False
        for leftover in self.root.iterdir():
            if leftover.name.startswith(_OPTIMIZED):  # a crash inside the swap of an optimized shard
                target = self.root / leftover.name[len(_OPTIMIZED):]
                if not target.exists():  # the old shard had gone to the trash: the optimized one goes in
                    os.replace(leftover, target)
                    continue
            if leftover.name.startswith((_TMP, _TRASH, _OPTIMIZED)):  # a crash's half-made or half-deleted folder
                shutil.rmtree(leftover, ignore_errors=True)

    @staticmethod
    def _lock(root: Path) -> IO[str]:
        handle = open(root / LOCK_FILE, "a+")  # noqa: SIM115 -- held for the store's lifetime
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            handle.close()
            raise StoreLocked(root) from None
        return handle

    def _unlock(self) -> None:
        with contextlib.suppress(Exception):
            portalocker.unlock(self._lock_file)
        self._lock_file.close()

    # -- shards ----------------------------------------------------------------------------------------

    def _folder(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or name in ("..",):
            raise InvalidRequest(f"Invalid collection name {name!r}.", param="collection")
        return self.root / name

    @contextlib.contextmanager
    def _using(self, name: str) -> Any:
        """The collection's shard, not swapped for an optimized one until the caller is done with it."""
        with self._swap.shared():
            yield self._shard(name)

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._guard:
            shard = self._shards.get(name)
            if shard is None:
                if self._closed:
                    raise NotFound("The vector store is closed.")
                if self.spec(name) is None:
                    raise NotFound(f"Collection {name} not found")
                shard = qe.EdgeShard.load(str(self._folder(name)))
                self._shards[name] = shard
            return shard

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / SPEC_FILE).is_file())

    def spec(self, name: str) -> CollectionSpec | None:
        cached = self._specs.get(name)
        if cached is not None:
            return cached
        try:
            raw = json.loads((self._folder(name) / SPEC_FILE).read_text())
        except (OSError, ValueError):
            return None
        spec = CollectionSpec(dense={k: int(v) for k, v in raw["dense"].items()},
                              sparse={k: bool(v) for k, v in raw.get("sparse", {}).items()},
                              metadata=raw.get("metadata", {}))
        self._specs[name] = spec
        return spec

    def exists(self, name: str) -> bool:
        return self.spec(name) is not None

    @staticmethod
    def edge_config(spec: CollectionSpec) -> qe.EdgeConfig:
        vectors = {n: qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine) for n, d in spec.dense.items()}
        if not vectors and not spec.sparse:  # the engine wants a vector; points of such a collection have none
            vectors = {"_": qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)}
        return qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors={n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if idf else None)
                            for n, idf in spec.sparse.items()} or None,
        )

    def create(self, name: str, spec: CollectionSpec) -> None:
        self.install(name, spec, lambda folder: qe.EdgeShard.create(str(folder), self.edge_config(spec)).close())

    def install(self, name: str, spec: CollectionSpec, fill: Any) -> None:
        """Make a collection folder aside with `fill(folder)`, then rename it into place (atomic)."""
        with self._guard:
            target = self._folder(name)
            if target.exists():
                raise Conflict(f"Collection {name} already exists", param="collection")
            staging = self.root / f"{_TMP}{uuid.uuid4().hex}"
            try:
                fill(staging)
                _write_json(staging / SPEC_FILE, {"dense": spec.dense, "sparse": spec.sparse,
                                                  "metadata": spec.metadata})
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _fsync_dir(self.root)

    def drop(self, name: str) -> None:
        with self._guard:
            target = self._folder(name)
            shard = self._shards.pop(name, None)
            self._specs.pop(name, None)
            if shard is not None:
                shard.close()
            if not target.exists():
                return
            trash = self.root / f"{_TRASH}{uuid.uuid4().hex}"
            os.replace(target, trash)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

    def _update(self, name: str, operation: Any) -> None:
        with self._writer, self._using(name) as shard:
            self._writes[name] = self._writes.get(name, 0) + 1
            try:
                shard.update(operation)
            except Exception as exc:
                raise _edge_error(exc, name) from exc

    def upsert(self, name: str, points: Sequence[Point], *, only_if: models.Filter | None = None,
               insert_only: bool = False) -> None:
        if not points:
            return
        self._update(name, qe.UpdateOperation.upsert_points(
            [_edge_point(p) for p in points], condition=edge_filter(only_if),
            update_mode=qe.UpdateMode.InsertOnly if insert_only else None))

    def delete(self, name: str, selector: Selector) -> None:
        if isinstance(selector, models.Filter):
            self._update(name, qe.UpdateOperation.delete_points_by_filter(_edge_filter(selector)))
        elif selector:
            self._update(name, qe.UpdateOperation.delete_points(list(selector)))

    def set_payload(self, name: str, payload: dict[str, Any], selector: Selector) -> None:
        mirror = _mirror_bools(payload)
        if isinstance(selector, models.Filter):
            flt = _edge_filter(selector)
            if mirror:  # first, while the filter still matches what it matched
                self._update(name, qe.UpdateOperation.set_payload_by_filter(flt, mirror, key=BOOLS))
            self._update(name, qe.UpdateOperation.set_payload_by_filter(flt, payload))
        elif selector:
            if mirror:
                self._update(name, qe.UpdateOperation.set_payload(list(selector), mirror, key=BOOLS))
            self._update(name, qe.UpdateOperation.set_payload(list(selector), payload))

    def retrieve(self, name: str, ids: Sequence[str], *, with_payload: bool | list[str] = True,
                 with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        with self._using(name) as shard:
            found = shard.retrieve(list(ids), with_payload=_with_payload(with_payload), with_vector=with_vectors)
        return [_record(r) for r in found]

    def scroll(self, name: str, *, filter: models.Filter | None = None, limit: int = 1024,
               offset: str | None = None, with_payload: bool | list[str] = True,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=edge_filter(filter),
                                   with_payload=_with_payload(with_payload), with_vector=with_vectors)
        with self._using(name) as shard:
            page, after = shard.scroll(request)
        return [_record(r) for r in page], None if after is None else str(after)

    def ordered(self, name: str, *, key: str, limit: int, offset: int = 0, filter: models.Filter | None = None,
                with_payload: bool | list[str] = True) -> list[Record]:
        request = qe.QueryRequest(limit=limit, offset=offset, query=qe.OrderBy(key, qe.Direction.Asc),
                                  filter=edge_filter(filter), with_payload=_with_payload(with_payload),
                                  with_vector=False)
        with self._using(name) as shard:
            found = shard.query(request)
        return [_record(p) for p in found]

    def count(self, name: str, filter: models.Filter | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=edge_filter(filter))
        with self._using(name) as shard:
            return int(shard.count(request))

    def query(self, name: str, searches: Sequence[Nearest], *, fusion: Fusion | None = None, limit: int,
              filter: models.Filter | None = None, score_threshold: float | None = None,
              with_payload: bool | list[str] = True) -> list[Record]:
        flt = edge_filter(filter)
        if fusion is None:
            (search,) = searches
            request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(_edge_vector(search.vector),
                                                                          using=search.using),
                                      filter=flt, score_threshold=score_threshold,
                                      with_payload=_with_payload(with_payload), with_vector=False)
        else:
            prefetches = [qe.Prefetch(limit=limit * 4, query=qe.Query.Nearest(_edge_vector(s.vector), using=s.using),
                                      filter=flt) for s in searches]
            # RRF with the server's default constant (k = 2), so both backends rank alike
            method: Any = qe.Fusion.Rrf(k=RRF_K) if fusion == "rrf" else qe.Fusion.Dbsf()
            request = qe.QueryRequest(limit=limit, prefetches=prefetches, query=method, filter=flt,
                                      score_threshold=score_threshold, with_payload=_with_payload(with_payload),
                                      with_vector=False)
        try:
            with self._using(name) as shard:
                found = shard.query(request)
        except Exception as exc:
            raise _edge_error(exc, name) from exc
        return [_record(p) for p in found]

    def index(self, name: str, field: str, schema: PayloadSchema) -> None:
        if schema == "bool":  # see BOOLS
            field, schema = f"{BOOLS}.{field}", "keyword"
        with self._using(name) as shard:
            if field in shard.info().payload_schema:
                return
        self._update(name, qe.UpdateOperation.create_field_index(field, _SCHEMAS[schema]))

    def unindexed(self, name: str) -> int:
        """The collection's vectors not in an index yet (dense ones are searched by brute force until a build).

        The engine counts sparse vectors as indexed from the moment they are written (their inverted index is
        built as they come): before any build, a hybrid collection reports one indexed vector per point."""
        with self._using(name) as shard:
            info = shard.info()
        spec = self.spec(name)
        vectors = max(1, len(spec.dense) + len(spec.sparse)) if spec else 1
        return max(0, info.points_count * vectors - info.indexed_vectors_count)

    def optimize(self, name: str) -> bool:
        """The engine's optimizers (HNSW build, merges) in a child process on a copy of the shard, then the
        optimized copy in place of the shard (see the module's docstring). False when there was nothing to
        do, or when the collection was written to meanwhile (the copy is dropped: the caller tries later)."""
        folder = self._folder(name)
        staging = self.root / f"{_TMP}{uuid.uuid4().hex}"
        try:
            with self._writer, self._using(name) as shard:  # readers go on; writers wait for the copy
                shard.flush()
                writes = self._writes.get(name, 0)
                shutil.copytree(folder, staging)
            child = subprocess.Popen([sys.executable, "-c", _OPTIMIZE_CHILD, str(staging)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while True:
                try:
                    out, err = child.communicate(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if self._closed or self._writes.get(name, 0) != writes:
                        child.kill()
                        child.communicate()
                        return False
            if child.returncode != 0:
                raise RuntimeError(f"Optimizing collection {name} failed: {err.strip()[-2000:]}")
            if out.strip() != "1":
                return False
            with self._swap.exclusive(), self._guard:  # no call uses the shard while it is swapped
                if self._closed or self._writes.get(name, 0) != writes or not folder.exists():
                    return False
                shard = self._shards.pop(name, None)
                if shard is not None:
                    shard.close()
                # a crash between the renames leaves the optimized copy under `.optimized-<name>` with no
                # `<name>`: the next start puts it in place (see __init__)
                optimized, trash = self.root / f"{_OPTIMIZED}{name}", self.root / f"{_TRASH}{uuid.uuid4().hex}"
                os.replace(staging, optimized)
                os.replace(folder, trash)
                os.replace(optimized, folder)
                _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- snapshots -------------------------------------------------------------------------------------

    def snapshot(self, name: str, target: Path) -> None:
        """A shard snapshot as Qdrant writes one (segments/<id>/files/..., wal/, config), for
        `EdgeShard.unpack_snapshot` or a server's shard snapshot upload. The caller keeps writers out."""
        with self._using(name) as shard:
            shard.flush()
            self._tar(self._folder(name), target)

    @staticmethod
    def _tar(folder: Path, target: Path) -> None:
        with tarfile.open(target, "w") as tar:
            for entry in sorted(folder.iterdir()):
                if entry.name == SPEC_FILE:
                    continue
                if entry.name == "segments":
                    for segment in sorted(entry.iterdir()):
                        if segment.is_dir() and not segment.name.startswith("."):
                            tar.add(segment, f"segments/{segment.name}/files")
                else:
                    tar.add(entry, entry.name)

    def restore(self, name: str, spec: CollectionSpec, snapshot: Path) -> None:
        """A new collection from a shard snapshot (the engine unpacks it), atomically."""
        def fill(folder: Path) -> None:
            qe.EdgeShard.unpack_snapshot(str(snapshot), str(folder))
            qe.EdgeShard.load(str(folder)).close()  # it must open before it is put in place

        self.install(name, spec, fill)

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
            for shard in self._shards.values():
                with contextlib.suppress(Exception):
                    shard.close()
            self._shards.clear()
            self._unlock()
            if self._temporary is not None:
                self._temporary.cleanup()


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_folder_free(path: str | Path) -> None:
    """Raise `StoreLocked` now if another process holds the embedded store in `path` (a startup check, so
    a server does not start half-way), and `StoreNeedsMigration` for a previous version's folder."""
    if str(path) == ":memory:":
        return
    root = Path(path).expanduser()
    lock_path = root / LOCK_FILE
    if lock_path.exists():
        with open(lock_path, "r+") as f:
            try:
                portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
            except portalocker.exceptions.LockException:
                raise StoreLocked(root.resolve()) from None
            portalocker.unlock(f)
    if is_local_mode_folder(root):
        raise StoreNeedsMigration(root.resolve())
