"""Records of the graph layer: what an extractor found in a chunk (the wire views: `inferag_protocol.graph`)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The collection setting (given at creation) that says how its graph is extracted.
SETTING = "graph"


@dataclass(frozen=True)
class EntityMention:
    """An entity as one chunk names it."""

    name: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class RelationMention:
    """Two entities of one chunk (by name, as in its `entities`) and what links them."""

    source: str
    target: str
    description: str = ""
    weight: float = 1.0


@dataclass
class ChunkGraph:
    """What an extractor found in one chunk."""

    entities: list[EntityMention] = field(default_factory=list)
    relations: list[RelationMention] = field(default_factory=list)
    language: str = "en"  # the chunk's (its stopwords shape the entity keys)
