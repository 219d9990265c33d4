"""Metadata filters of the API as Qdrant conditions, and the filters of the document protocol."""

from __future__ import annotations

import math

from qdrant_client import models

from inferag_protocol.rag import MetadataFilter
from services.common.errors import InvalidRequest

from .backend import PayloadSchema

STAGED = "staged"
LIVE = "live"
_RANGE_OPS = ("gt", "gte", "lt", "lte")
_RESERVED_KEYS = ("doc_id", "source")
# Qdrant's integers are 64-bit: a larger one made the engine raise OverflowError (a 500).
_INT64 = (-(2**63), 2**63 - 1)


def match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def live() -> models.FieldCondition:
    return match("state", LIVE)


def doc_filter(doc_id: str, version: str | None = None) -> models.Filter:
    """The points of a document (of one version when given)."""
    must: list[models.Condition] = [match("doc_id", doc_id)]
    if version is not None:
        must.append(match("version", version))
    return models.Filter(must=must)


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    # math.isfinite() of an int past a float's range raises OverflowError: ints are checked on their own
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


def _bad_filter(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid filter: {message}", param="filter")


def _plain_key(key: object) -> bool:
    """A metadata key usable as `metadata.<key>`: Qdrant parses unquoted path keys as letters, digits, '_', '-'
    (anything else, like '=' or a control character, made its local mode raise: a 500)."""
    return isinstance(key, str) and 0 < len(key) <= 128 and all(c.isalnum() or c in "_-" for c in key)


def _check_int(key: str, value: int) -> None:
    if not _is_int64(value):
        raise _bad_filter(f"the integer for '{key}' is out of range (Qdrant's integers are 64-bit).")


def filter_conditions(spec: MetadataFilter | None) -> tuple[list[models.Condition], dict[str, PayloadSchema]]:
    """A metadata filter as Qdrant conditions (all must hold), and the payload index each field wants.

    `{"k": v}` is equality on `metadata.k`, `{"k": {"any": [...]}}` any-of, `{"k": {"gte": 1, "lt": 5}}`
    a range; `doc_id` and `source` are the document's own fields (equality or any-of).
    """
    if spec is None:
        return [], {}
    if not isinstance(spec, dict):
        raise _bad_filter("expected an object of conditions.")
    conditions: list[models.Condition] = []
    indexes: dict[str, PayloadSchema] = {}
    for key, value in spec.items():
        if not _plain_key(key):
            raise _bad_filter(f"invalid key {key!r}.")
        reserved = key in _RESERVED_KEYS
        path = key if reserved else f"metadata.{key}"
        if isinstance(value, dict):
            ops = set(value)
            if ops == {"any"}:
                options = value["any"]
                if not isinstance(options, list) or not options:
                    raise _bad_filter(f"'{key}.any' must be a non-empty list.")
                if all(isinstance(o, str) for o in options):
                    indexes[path] = "keyword"
                elif all(isinstance(o, int) and not isinstance(o, bool) for o in options) and not reserved:
                    for option in options:
                        _check_int(key, option)
                    indexes[path] = "integer"
                else:
                    raise _bad_filter(f"'{key}.any' must list strings only or integers only.")
                conditions.append(models.FieldCondition(key=path, match=models.MatchAny(any=options)))
            elif ops and ops <= set(_RANGE_OPS) and not reserved:
                bounds = {op: value[op] for op in _RANGE_OPS if op in value}
                if not all(_is_number(b) for b in bounds.values()):
                    raise _bad_filter(f"the bounds of '{key}' must be numbers.")
                for bound in bounds.values():
                    if isinstance(bound, int):
                        _check_int(key, bound)
                conditions.append(models.FieldCondition(key=path, range=models.Range(**bounds)))
                integral = all(isinstance(b, int) for b in bounds.values())
                indexes[path] = "integer" if integral else "float"
            else:
                allowed = "'any'" if reserved else "'any', or range operators gt, gte, lt, lte"
                raise _bad_filter(f"'{key}' takes a value, or an object with {allowed}; got keys {sorted(ops)}.")
        elif isinstance(value, str):
            conditions.append(match(path, value))
            indexes[path] = "keyword"
        elif isinstance(value, bool) and not reserved:
            conditions.append(match(path, value))
            indexes[path] = "bool"
        elif isinstance(value, int) and not reserved:
            _check_int(key, value)
            conditions.append(match(path, value))
            indexes[path] = "integer"
        elif _is_number(value) and not reserved:
            # MatchValue has no floats: an exact float is the range [v, v]
            conditions.append(models.FieldCondition(key=path, range=models.Range(gte=value, lte=value)))
            indexes[path] = "float"
        else:
            raise _bad_filter(f"unsupported value for '{key}': {value!r}.")
    return conditions, indexes

