"""Wire models of the knowledge graph: what a graph hit carries, the entity views of the graph routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GraphMode = Literal["off", "keyphrase", "llm"]
GRAPH_MODES: tuple[GraphMode, ...] = ("off", "keyphrase", "llm")


class EntityRef(BaseModel):
    """An entity that brought a hit in: matched by the query (hop 0) or reached through relations."""

    id: str
    name: str
    type: str
    hop: int = Field(description="0: matched by the query; 1-2: reached through that many relations.")
    score: float


class RelationRef(BaseModel):
    source: str = Field(description="Entity id.")
    target: str = Field(description="Entity id.")
    source_name: str
    target_name: str
    description: str = ""


class GraphEvidence(BaseModel):
    """Why graph retrieval returned a chunk: the entities of it the walk reached, and the relations it walked."""

    entities: list[EntityRef] = Field(default_factory=list)
    relations: list[RelationRef] = Field(default_factory=list)


class GraphStats(BaseModel):
    object: Literal["graph"] = "graph"
    collection: str
    mode: GraphMode
    entities: int
    relations: int
    chunks: int = Field(description="Chunks whose extraction is in the graph (with or without entities).")
    documents: int
    entity_points: int = Field(description="Entity points in the companion collection (one per entity).")


class EntityInfo(BaseModel):
    id: str
    name: str
    type: str
    description: str = ""
    degree: int = Field(description="Entities related to this one.")
    chunks: int = Field(description="Chunks that mention it.")
    documents: int = Field(description="Documents that mention it.")
    score: float | None = Field(None, description="Match with the query (listing with `q`).")


class EntityList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EntityInfo]
    total: int = Field(description="Entities in the collection's graph.")


class Relation(BaseModel):
    source: str
    target: str
    source_name: str
    target_name: str
    description: str = ""
    weight: float = Field(description="How often the two are mentioned together.")
    doc_ids: list[str] = Field(default_factory=list)


class LinkedChunk(BaseModel):
    id: str
    doc_id: str
    chunk_index: int


class EntityDetail(EntityInfo):
    object: Literal["graph.entity"] = "graph.entity"
    descriptions: list[str] = Field(default_factory=list, description="Distinct descriptions from its mentions.")
    neighbours: list[EntityInfo] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    linked_chunks: list[LinkedChunk] = Field(default_factory=list)
