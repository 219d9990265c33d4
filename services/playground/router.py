"""GET `/` and `/playground`: the playground page.

The page itself holds no secret, so it is served without the API key; every call it makes
sends the key the user typed (kept in the browser's localStorage) as a Bearer token.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

playground_router = APIRouter(tags=["playground"])


@cache
def page() -> str:
    return resources.files(__package__ or "services.playground").joinpath("index.html").read_text(encoding="utf-8")


@playground_router.get("/", response_class=HTMLResponse, include_in_schema=False)
@playground_router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})
