"""Bearer-key check shared by the services (constant-time comparison)."""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from .errors import Unauthorized

OPEN_PATHS = frozenset({"/health", "/ready"})


def check_api_key(request: Request, key: SecretStr | None) -> None:
    if key is None or request.url.path in OPEN_PATHS:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise Unauthorized("Missing or invalid API key. Send 'Authorization: Bearer <key>'.")
