"""HTTP routes of a collection's knowledge graph (`/rag/collections/{name}/graph/*`): entities, one entity, export."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from inferag_protocol.graph import EntityDetail, EntityList, GraphStats
from services.common.protocol import error_responses
from services.common.service import require_key

from ..dependencies import Rag, caller

router = APIRouter(dependencies=[Depends(require_key)], tags=["rag"])
# 409: the collection has no knowledge graph
_ERRORS = error_responses(400, 401, 403, 404, 409, 429, 503)


@router.get("/rag/collections/{name}/graph", response_model=GraphStats, responses=_ERRORS)
async def graph_stats(name: str, request: Request, rag: Rag) -> GraphStats:
    """How the collection's graph is made and what it holds."""
    caller(request).check(name)
    return await rag.graph.stats(name)


@router.post("/rag/collections/{name}/graph/rebuild", response_model=GraphStats, responses=_ERRORS)
async def graph_rebuild(name: str, request: Request, rag: Rag) -> GraphStats:
    """Extract the whole graph again from the stored chunks (never needed after a write: that is incremental)."""
    caller(request).check(name, write=True)
    return await rag.graph.rebuild(name)


@router.get("/rag/collections/{name}/graph/entities", response_model=EntityList, responses=_ERRORS)
async def list_entities(
    name: str,
    request: Request,
    rag: Rag,
    q: Annotated[str | None, Query(max_length=1000, description="Match by name, then by meaning.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> EntityList:
    """Entities with their types, descriptions and degree: those matching `q`, or the most connected."""
    caller(request).check(name)
    return await rag.graph.entities(name, q, limit)


@router.get("/rag/collections/{name}/graph/entities/{entity_id}", response_model=EntityDetail, responses=_ERRORS)
async def get_entity(name: str, entity_id: str, request: Request, rag: Rag) -> EntityDetail:
    """One entity: its neighbours, relations and the chunks that mention it."""
    caller(request).check(name)
    return await rag.graph.entity(name, entity_id)


@router.get(
    "/rag/collections/{name}/graph/export",
    responses={200: {"content": {"application/graphml+xml": {}, "application/json": {}},
                     "description": "The graph as GraphML or NetworkX node-link JSON."}, **_ERRORS},
)  # fmt: skip
async def export_graph(
    name: str, request: Request, rag: Rag, format: Annotated[Literal["graphml", "json"], Query()] = "graphml"
) -> Response:
    """The whole graph (entities as nodes, relations as edges) for Gephi, yEd, Neo4j or NetworkX."""
    caller(request).check(name)
    body, media = await rag.graph.export(name, format)
    filename = f"{name}-graph.{'graphml' if format == 'graphml' else 'json'}"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
