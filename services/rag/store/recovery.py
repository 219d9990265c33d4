"""Recovery: finish or roll back what an interrupted write left (see `documents.py`).

Two things can be left: a registry entry not yet `published` (a crash after the commit), which is
published again, and `staged` points that no entry names (a crash before the commit, or inside a
delete), which go. Only those are read, through payload indexes, so recovery stays cheap on a large
collection and can run periodically. Versions a writer of this process is still writing are left
alone; on a server, so are recent ones, which may be another replica's write under way.
"""

from __future__ import annotations

from collections.abc import Set

from qdrant_client import models

from .backend import Backend, payload_of
from .documents import publish, registry_name, registry_versions, scroll_all, version_age_s, version_created_ms
from .filters import STAGED, match

# A server's staged points that no registry entry names may belong to an ingestion still under way in
# another replica; only this old are they a crash's leftovers.
STALE_STAGED_S = 3600.0
# An unpublished entry this young may be another replica between its commit and its publish. Publishing
# it is harmless (publish is idempotent) but it is that writer's work.
UNPUBLISHED_GRACE_S = 30.0


def recover_collection(backend: Backend, name: str, busy: Set[str], *,
                       busy_at_ms: int | None = None) -> tuple[int, int]:
    """(points published, points deleted) in collection `name`; `busy`: versions being written here, as read
    at `busy_at_ms` (ms since the epoch): a version made since then is a writer's that `busy` does not list."""
    embedded = backend.kind == "embedded"

    def writing(version: str) -> bool:
        """A writer of this process has `version` under way (or made it after `busy` was read)."""
        return version in busy or (busy_at_ms is not None and version_created_ms(version) >= busy_at_ms)

    def left_over(version: str) -> bool:
        """Staged points of `version` are a dead writer's (no registry entry names them)."""
        return not writing(version) and (embedded or version_age_s(version) >= STALE_STAGED_S)

    registry = registry_name(name)
    published = deleted = 0
    versions: dict[str, str] = {}
    superseded: dict[str, list[str]] = {}
    left_alone: set[str] = set()  # unpublished versions that are another writer's to publish
    unpublished = models.Filter(must=[match("published", False)])
    for entry in scroll_all(backend, registry, unpublished):
        p = payload_of(entry)
        version = p.get("version", "")
        if writing(version) or (not embedded and version_age_s(version) < UNPUBLISHED_GRACE_S):
            left_alone.add(version)
            continue
        versions[p["doc_id"]] = version
        superseded[p["doc_id"]] = list(p.get("previous") or [])
    # staged points: by document and version
    staged: dict[str, dict[str, list[str]]] = {}
    for record in scroll_all(backend, name, models.Filter(must=[match("state", STAGED)]), ["doc_id", "version"]):
        p = payload_of(record)
        staged.setdefault(str(p.get("doc_id")), {}).setdefault(str(p.get("version")), []).append(record.id)
    if staged:
        committed = registry_versions(backend, name, list(staged))
        for doc_id, by_version in staged.items():
            version = committed.get(doc_id)
            if version in by_version and not writing(version) and version not in left_alone:
                # committed but not live: a crash inside a publish or a delete with the entry still there
                versions.setdefault(doc_id, version)
                superseded.setdefault(doc_id, [])
            stale = [point_id for v, ids in by_version.items() if v != version and left_over(v) for point_id in ids]
            if stale:
                backend.delete(name, stale)
                deleted += len(stale)
    if versions:
        for doc_id, version in versions.items():
            published += len(staged.get(doc_id, {}).get(version, []))
        old = sorted({v for vs in superseded.values() for v in vs} - set(versions.values()))
        if old:
            deleted += backend.count(name, models.Filter(must=[
                models.FieldCondition(key="version", match=models.MatchAny(any=old))]))
        publish(backend, name, versions, superseded)
    return published, deleted

