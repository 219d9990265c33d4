"""API keys: who is calling (constant-time check), what collections they may touch, how fast.

Keys come from settings: `api_key` (full access; also the key services use between
themselves) and `api_keys`, a JSON list of scoped keys:
`[{"name": "team-a", "key": "…", "collections": ["docs", "faq"], "write": false}]`.
With no key configured every route is open. `/health` and `/ready` are always open.
Keys never appear in messages or logs; a key is named by its `name`.
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import BaseModel, Field, SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import Forbidden, Overloaded, Unauthorized, error_response

OPEN_PATHS = frozenset({"/health", "/ready"})


class ApiKey(BaseModel):
    name: str = Field(min_length=1, description="Shown in logs and errors instead of the key.")
    key: SecretStr
    collections: list[str] | None = Field(None, description="Collections it may use; null: all of them.")
    write: bool = Field(True, description="May ingest, delete and create; false: read and ask only.")


@dataclass(frozen=True)
class Principal:
    """The caller: a key's name and scope (`collections` None: every collection)."""

    name: str
    collections: frozenset[str] | None = None
    write: bool = True

    def can(self, collection: str, *, write: bool = False) -> bool:
        in_scope = self.collections is None or collection in self.collections
        return in_scope and (self.write or not write)

    def check(self, collection: str, *, write: bool = False) -> None:
        """Forbidden (403) unless this key may read (or write) `collection`."""
        if not self.can(collection, write=write):
            what = "write to" if write and (self.collections is None or collection in self.collections) else "use"
            raise Forbidden(f"The API key '{self.name}' may not {what} the collection '{collection}'.",
                            param="collection")  # fmt: skip


ANONYMOUS = Principal("anonymous")
ADMIN = Principal("admin")


def authenticate(request: Request, key: SecretStr | None, keys: list[ApiKey] | None = None) -> Principal:
    """The caller of `request`, or Unauthorized (401). Every configured key is compared, in constant time."""
    if key is None and not keys:
        return ANONYMOUS
    if request.url.path in OPEN_PATHS:
        return ANONYMOUS
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    found: Principal | None = None
    if key is not None and hmac.compare_digest(given, key.get_secret_value().encode()):
        found = ADMIN
    for scoped in keys or []:
        if hmac.compare_digest(given, scoped.key.get_secret_value().encode()) and found is None:
            cols = frozenset(scoped.collections) if scoped.collections is not None else None
            found = Principal(scoped.name, cols, scoped.write)
    if found is None or not given:
        raise Unauthorized("Missing or invalid API key. Send 'Authorization: Bearer <key>'.")
    return found


class KeyCheck:
    """Pure-ASGI middleware: with keys configured, a request without a valid one is answered 401 before
    any route runs or any body is read, on every path the app mounts (documentation and unknown paths
    included) but /health and /ready. The routes still ask for the caller (scope, rate limit)."""

    def __init__(self, app: ASGIApp, key: SecretStr | None, keys: list[ApiKey] | None):
        self.app, self.key, self.keys = app, key, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (self.key is not None or self.keys):
            try:
                authenticate(Request(scope), self.key, self.keys)
            except Unauthorized as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """A token bucket per caller: `rate` requests a second on average, bursts up to `burst`."""

    rate: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, who: str) -> None:
        """Spend one token, or Overloaded (429) with the seconds until the next one in Retry-After."""
        now = time.monotonic()
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise Overloaded(
                f"Rate limit of {self.rate:g} requests/s for '{who}' exceeded; retry in {math.ceil(wait)} s.",
                retry_after=wait,
            )
        bucket.tokens -= 1
        if len(self._buckets) > 10_000:  # forget idle callers (full buckets) so the map stays small
            for name in [n for n, b in self._buckets.items() if now - b.stamp > self.burst / self.rate]:
                del self._buckets[name]
