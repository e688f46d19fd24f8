"""Filters on documents' metadata: OpenAI's comparison and compound filters (``eq``, ``ne``, ``gt``,
``gte``, ``lt``, ``lte``, ``in``, ``nin``; ``and``, ``or``), parsed from JSON, and the SQL that selects
the documents a filter admits. A plain ``{"key": value}`` object is the ``and`` of ``eq`` comparisons.

Comparisons are typed as JSON is: ``true`` never equals ``1``, and ``"10"`` never equals ``10``; ordering
compares numbers with numbers and strings with strings, and a document without the key matches only
``ne`` and ``nin``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_engine.errors import InvalidRequest

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
MAX_DEPTH = 8
# What SQLite can compare a value with: its integers are 64-bit.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_SQL_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Comparison:
    key: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class Compound:
    op: str
    filters: tuple[Filter, ...]


Filter = Comparison | Compound


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _scalar(value: Any, where: str, param: str) -> Scalar:
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        raise _invalid(f"{where}: integer {value} is outside [{INT_MIN}, {INT_MAX}]", param)
    if isinstance(value, str | bool | int | float):
        return value
    raise _invalid(f"{where}: value must be a string, number or boolean, got {json.dumps(value)}", param)


def parse_filter(data: Any, param: str = "filters", depth: int = 0) -> Filter:
    """A filter from its JSON form (OpenAI's shape); InvalidRequest naming ``param`` if malformed."""
    if not isinstance(data, Mapping):
        raise _invalid(f"{param} must be an object", param)
    if depth > MAX_DEPTH:
        raise _invalid(f"{param} nests compound filters deeper than {MAX_DEPTH}", param)
    kind = data.get("type")
    if kind in COMPOUNDS:
        items = data.get("filters")
        if not isinstance(items, list) or not items:
            raise _invalid(f"{param}: an `{kind}` filter needs a non-empty `filters` list", param)
        return Compound(kind, tuple(parse_filter(f, param, depth + 1) for f in items))
    if kind not in COMPARISONS:
        raise _invalid(
            f"{param}: type must be one of {', '.join(COMPARISONS + COMPOUNDS)}, got {kind!r}", param
        )
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise _invalid(f"{param}: a `{kind}` comparison needs a non-empty string `key`", param)
    if "value" not in data:
        raise _invalid(f"{param}: the `{kind}` comparison on {key!r} needs a `value`", param)
    value = data["value"]
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not value:
            raise _invalid(f"{param}: `{kind}` on {key!r} needs a non-empty list `value`", param)
        return Comparison(key, kind, tuple(_scalar(v, f"`{kind}` on {key!r}", param) for v in value))
    scalar = _scalar(value, f"`{kind}` on {key!r}", param)
    if kind in _SQL_ORDER and isinstance(scalar, bool):
        raise _invalid(f"{param}: `{kind}` on {key!r} orders numbers or strings, not booleans", param)
    return Comparison(key, kind, scalar)


def from_equalities(where: Mapping[str, Any]) -> Filter | None:
    """The filter of a ``{"key": value}`` object: every field equal (None when it is empty)."""
    parts = tuple(Comparison(k, "eq", v) for k, v in where.items())
    return Compound("and", parts) if parts else None


def as_filter(where: Filter | Mapping[str, Any]) -> Filter | None:
    """A filter, or the filter of a ``{"key": value}`` object."""
    return from_equalities(where) if isinstance(where, Mapping) else where


def to_json(f: Filter) -> dict[str, Any]:
    """The OpenAI JSON form of a filter (``parse_filter`` reads it back)."""
    if isinstance(f, Compound):
        return {"type": f.op, "filters": [to_json(p) for p in f.filters]}
    value = list(f.value) if isinstance(f.value, tuple) else f.value
    return {"type": f.op, "key": f.key, "value": value}


def to_sql(f: Filter, column: str) -> tuple[str, list[Any]]:
    """A SQL condition on the JSON object in ``column`` that holds where the filter does, and its
    parameters."""
    if isinstance(f, Compound):
        parts = [to_sql(p, column) for p in f.filters]
        joiner = " AND " if f.op == "and" else " OR "
        return "(" + joiner.join(sql for sql, _ in parts) + ")", [p for _, ps in parts for p in ps]
    path = f'$."{f.key}"'
    if f.op in ("in", "nin"):
        assert isinstance(f.value, tuple)
        equal = [_equal_sql(column, path, v) for v in f.value]
        sql = "(" + " OR ".join(s for s, _ in equal) + ")"
        params = [p for _, ps in equal for p in ps]
        return (sql if f.op == "in" else f"NOT {sql}"), params
    assert not isinstance(f.value, tuple)
    if f.op in ("eq", "ne"):
        sql, params = _equal_sql(column, path, f.value)
        return (sql if f.op == "eq" else f"NOT {sql}"), params
    kinds = ("text",) if isinstance(f.value, str) else ("integer", "real")
    marks = ", ".join("?" * len(kinds))
    sql = f"(json_type({column}, ?) IN ({marks}) AND json_extract({column}, ?) {_SQL_ORDER[f.op]} ?)"
    return sql, [path, *kinds, path, f.value]


def _equal_sql(column: str, path: str, value: Any) -> tuple[str, list[Any]]:
    # SQLite stores true as 1: compare JSON types too, so that true never matches 1. coalesce: a missing
    # key compares as NULL, and NOT NULL would drop the document from `ne` instead of admitting it.
    if isinstance(value, bool):
        return f"coalesce(json_type({column}, ?) = ?, 0)", [path, "true" if value else "false"]
    if isinstance(value, dict | list):  # arrays/objects come back minified
        return f"coalesce(json_extract({column}, ?) = ?, 0)", [path, json.dumps(value, separators=(",", ":"))]
    kind = {int: "integer", float: "real"}.get(type(value), "text")
    kinds = ("integer", "real") if kind != "text" else ("text",)
    marks = ", ".join("?" * len(kinds))
    sql = f"coalesce(json_extract({column}, ?) = ? AND json_type({column}, ?) IN ({marks}), 0)"
    return sql, [path, value, path, *kinds]
