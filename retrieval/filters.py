"""Filters on documents' metadata: OpenAI's comparison and compound filters (``eq``, ``ne``, ``gt``,
``gte``, ``lt``, ``lte``, ``in``, ``nin``; ``and``, ``or``), parsed from JSON, and the SQL that selects
the documents a filter admits. A plain ``{"key": value}`` object is the ``and`` of ``eq`` comparisons.

Comparisons are typed as JSON is: ``true`` never equals ``1``, and ``"10"`` never equals ``10``; ordering
compares numbers with numbers and strings with strings, and a document without the key matches only
``ne`` and ``nin``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared_engine.errors import InvalidRequest

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
MAX_DEPTH = 8
# Comparisons and listed values in one filter, at most: bounds the query's size and its work per document.
MAX_COMPARISONS = 256
MAX_VALUES = 10_000
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


def parse_filter(data: Any, param: str = "filters") -> Filter:
    """A filter from its JSON form (OpenAI's shape); InvalidRequest naming ``param`` if malformed or
    larger than ``MAX_COMPARISONS`` comparisons or ``MAX_VALUES`` values."""
    parsed = _parse(data, param, 0)
    _check_size(parsed, param)
    return parsed


def _check_size(f: Filter, param: str) -> None:
    leaves = list(_comparisons(f))
    if len(leaves) > MAX_COMPARISONS:
        raise _invalid(f"{param} holds {len(leaves)} comparisons, more than {MAX_COMPARISONS}", param)
    values = sum(len(c.value) if isinstance(c.value, tuple) else 1 for c in leaves)
    if values > MAX_VALUES:
        raise _invalid(f"{param} lists {values} values, more than {MAX_VALUES}", param)


def _comparisons(f: Filter) -> Iterator[Comparison]:
    if isinstance(f, Comparison):
        yield f
    else:
        for part in f.filters:
            yield from _comparisons(part)


def _parse(data: Any, param: str, depth: int) -> Filter:
    if not isinstance(data, Mapping):
        raise _invalid(f"{param} must be an object", param)
    if depth > MAX_DEPTH:
        raise _invalid(f"{param} nests compound filters deeper than {MAX_DEPTH}", param)
    kind = data.get("type")
    if kind in COMPOUNDS:
        items = data.get("filters")
        if not isinstance(items, list) or not items:
            raise _invalid(f"{param}: an `{kind}` filter needs a non-empty `filters` list", param)
        return Compound(kind, tuple(_parse(f, param, depth + 1) for f in items))
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
    """The filter of a ``{"key": value}`` object: every field equal (None when it is empty). An object
    shaped as a comparison of vector-store search (``{"type": "eq", "key", "value"}``) is refused: read
    as equalities it silently matched nothing."""
    if set(where) == {"type", "key", "value"} and where["type"] in COMPARISONS:
        raise _invalid(
            'filter: this is {"field": value, ...}, fields that must be equal; {"type", "key", "value"} '
            "is the filters of /v1/vector_stores/{id}/search",
            "filter",
        )
    parts = tuple(Comparison(k, "eq", v) for k, v in where.items())
    if not parts:
        return None
    combined = Compound("and", parts)
    _check_size(combined, "filter")
    return combined


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
    parameters.

    Keys are looked up among the object's own (``json_each`` decodes them), not through a JSON path,
    which cannot name every key (a quote, a backslash; a non-ASCII key as ``json.dumps`` escapes it)."""
    if isinstance(f, Compound):
        parts = [to_sql(p, column) for p in f.filters]
        joiner = " AND " if f.op == "and" else " OR "
        return _balanced([sql for sql, _ in parts], joiner), [p for _, ps in parts for p in ps]
    if f.op in ("in", "nin"):
        assert isinstance(f.value, tuple)
        condition, params = _one_of_sql(f.value)
    elif f.op in ("eq", "ne"):
        assert not isinstance(f.value, tuple)
        condition, params = _equal_sql(f.value)
    else:
        assert not isinstance(f.value, tuple)
        kinds = _TEXT if isinstance(f.value, str) else _NUMBER
        condition, params = f"type IN {kinds} AND value {_SQL_ORDER[f.op]} ?", [f.value]
    # A document without the key has no such entry: `ne` and `nin` admit it, the others do not.
    sql = f"EXISTS (SELECT 1 FROM json_each({column}) WHERE key = ? AND {condition})"
    return (f"NOT {sql}" if f.op in ("ne", "nin") else sql), [f.key, *params]


_TEXT, _NUMBER = "('text')", "('integer', 'real')"


def _balanced(parts: list[str], joiner: str) -> str:
    """``parts`` joined by ``joiner``, nested by halves: SQLite bounds an expression's depth (1,000), and a
    flat chain of n terms is n deep."""
    if len(parts) == 1:
        return parts[0]
    half = len(parts) // 2
    return f"({_balanced(parts[:half], joiner)}{joiner}{_balanced(parts[half:], joiner)})"


def _equal_sql(value: Any) -> tuple[str, list[Any]]:
    # An entry's value for true is 1: compare JSON types too, so that true never matches 1.
    if isinstance(value, bool):
        return "type = ?", ["true" if value else "false"]
    if isinstance(value, dict | list):  # arrays and objects come back minified
        return "type IN ('array', 'object') AND value = ?", [json.dumps(value, separators=(",", ":"))]
    kinds = _TEXT if isinstance(value, str) else _NUMBER
    return f"type IN {kinds} AND value = ?", [value]


def _one_of_sql(values: tuple[Scalar, ...]) -> tuple[str, list[Any]]:
    """An entry equal to any of ``values``: one ``IN`` list per JSON type, however many values."""
    flags = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    texts = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    parts: list[str] = []
    params: list[Any] = []
    for kinds, group in (("", flags), (_TEXT, texts), (_NUMBER, numbers)):
        if group:
            marks = ", ".join("?" * len(group))
            parts.append(f"type IN ({marks})" if not kinds else f"(type IN {kinds} AND value IN ({marks}))")
            params += group
    return "(" + " OR ".join(parts) + ")", params
