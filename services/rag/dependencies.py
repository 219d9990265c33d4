"""What every RAG route depends on: the loaded service, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.auth import ANONYMOUS, Principal
from services.common.service import loaded_service

from .service import RagService


def get_rag(request: Request) -> RagService:
    service: RagService = loaded_service(request)
    return service


def caller(request: Request) -> Principal:
    """Who is calling (set by the key check); collections outside its scope are 403."""
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


Rag = Annotated[RagService, Depends(get_rag)]
