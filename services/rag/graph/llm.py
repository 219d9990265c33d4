"""The LLM extractor: entities and relations as JSON the generation service is constrained to (json_schema).

Structured output (`response_format: json_schema`, xgrammar in the transformers engine, vLLM's
structured outputs) makes every reply parse against the schema, which is what lets a small local
model return a usable graph. The schema bounds every list and string, so a reply has a bounded
length and fits `max_tokens`; a reply cut short anyway (`finish_reason: length`) is asked again
with a smaller schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import EngineError
from services.generation.protocol import ChatCompletionRequest

from ..generator import Generator
from .text import WORD, entity_key, guess_language
from .types import ChunkGraph, EntityMention, RelationMention

ENTITY_TYPES = ("PERSON", "ORGANIZATION", "LOCATION", "EVENT", "PRODUCT", "CONCEPT", "OTHER")
NAME_CHARS = 48
DESCRIPTION_CHARS = 60

SYSTEM_PROMPT = (
    "You build a knowledge graph from a text. List the entities the text names (people, organizations, places, "
    "events, products, key concepts) with their type and a short description taken from the text, then the "
    "relations between them: source and target are entity names from your list, the description says how they "
    "are related. Use only facts stated in the text. Answer in JSON."
)


def schema(max_entities: int, max_relations: int) -> dict[str, Any]:
    """The JSON schema replies are constrained to (every string and list bounded)."""
    name = {"type": "string", "minLength": 1, "maxLength": NAME_CHARS}
    description = {"type": "string", "maxLength": DESCRIPTION_CHARS}
    entity = {
        "type": "object",
        "properties": {"name": name, "type": {"type": "string", "enum": list(ENTITY_TYPES)},
                       "description": description},
        "required": ["name", "type", "description"],
        "additionalProperties": False,
    }
    relation = {
        "type": "object",
        "properties": {"source": name, "target": name, "description": description},
        "required": ["source", "target", "description"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "entities": {"type": "array", "items": entity, "maxItems": max_entities},
            "relations": {"type": "array", "items": relation, "maxItems": max_relations},
        },
        "required": ["entities", "relations"],
        "additionalProperties": False,
    }


Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS)]
Description = Annotated[str, Field(max_length=DESCRIPTION_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExtractedEntity(_Strict):
    name: Name
    type: Literal["PERSON", "ORGANIZATION", "LOCATION", "EVENT", "PRODUCT", "CONCEPT", "OTHER"]
    description: Description


class ExtractedRelation(_Strict):
    source: Name
    target: Name
    description: Description


class Extraction(_Strict):
    """A reply of the model: what `schema()` allows, checked again on arrival."""

    entities: list[ExtractedEntity]
    relations: list[ExtractedRelation]


def to_chunk_graph(extraction: Extraction, language: str = "en") -> ChunkGraph:
    """Entities merged by key; a relation's unlisted end becomes an entity of type OTHER; self-loops go."""
    entities: dict[str, EntityMention] = {}
    for e in extraction.entities:
        key = entity_key(e.name, language)
        if key and key not in entities:
            entities[key] = EntityMention(e.name.strip(), e.type, e.description.strip())
    relations: dict[tuple[str, str], RelationMention] = {}
    for r in extraction.relations:
        ends = []
        for name in (r.source, r.target):
            key = entity_key(name, language)
            if key and key not in entities:
                entities[key] = EntityMention(name.strip(), "OTHER", "")
            ends.append(key)
        a, b = ends
        if not a or not b or a == b or (a, b) in relations or (b, a) in relations:
            continue
        relations[(a, b)] = RelationMention(entities[a].name, entities[b].name, r.description.strip())
    return ChunkGraph(list(entities.values()), list(relations.values()), language)


class LlmExtractor:
    """Extraction through the generation service, a few chunks at a time."""

    mode = "llm"
    embed_descriptions = True

    def __init__(self, generator: Generator, model: Callable[[], Awaitable[str]], *, concurrency: int = 4,
                 max_tokens: int = 1024, max_entities: int = 6, max_relations: int = 4):
        self.generator, self.model = generator, model
        self.max_tokens, self.max_entities, self.max_relations = max_tokens, max_entities, max_relations
        self._gate = asyncio.Semaphore(concurrency)

    def body(self, model: str, text: str, max_entities: int, max_relations: int) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"Text:\n{text}"}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "seed": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "knowledge_graph", "strict": True,
                                "schema": schema(max_entities, max_relations)},
            },
        }

    async def reply(self, text: str) -> Extraction:
        """The model's extraction for one text, valid for the schema (EngineError if it never is)."""
        model = await self.model()
        limits = (self.max_entities, self.max_relations)
        for _ in range(2):
            async with self._gate:
                result = await self.generator.chat(
                    ChatCompletionRequest.model_validate(self.body(model, text, *limits)))
            choice = result.choices[0]
            content = choice.message.content or ""
            if choice.finish_reason != "length":
                try:
                    return Extraction.model_validate_json(content)
                except ValidationError as exc:
                    raise EngineError(f"The model's graph extraction does not match the schema: {exc}") from exc
            limits = (max(1, limits[0] // 2), max(1, limits[1] // 2))  # cut short: ask for less
        raise EngineError(f"The model's graph extraction did not fit in {self.max_tokens} tokens.")

    async def extract(self, texts: Sequence[str]) -> list[ChunkGraph]:
        replies = await asyncio.gather(*(self.reply(t) for t in texts))
        return [to_chunk_graph(r, guess_language(WORD.findall(t.casefold())[:200])) for r, t in zip(replies, texts,
                                                                                                   strict=True)]
