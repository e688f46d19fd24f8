"""OpenAI's comparison and compound filters: parsing (with the 400s a malformed filter gets) and what the
SQL they become admits, run by SQLite over JSON metadata as the store keeps it."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from retrieval.filters import MAX_COMPARISONS, MAX_VALUES, from_equalities, parse_filter, to_json, to_sql
from shared_engine.errors import InvalidRequest

ROWS: dict[str, dict[str, Any]] = {
    "a": {"year": 2020, "topic": "space", "public": True, "score": 4.5},
    "b": {"year": 2021, "topic": "food", "public": False, "score": 3},
    "c": {"year": "2020", "topic": "space"},
    "d": {"topic": "music", "public": 1},
    "e": {},
    "f": {"größe": 3, "类别": "hr", 'a"b': 1, "a\\b": "x"},
}


def admitted(data: dict[str, Any] | Any) -> set[str]:
    """The rows a filter (its JSON form, or one already parsed) admits, with metadata stored as the store
    stores it (``json.dumps``: non-ASCII keys escaped)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id TEXT, metadata TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(k, json.dumps(v)) for k, v in ROWS.items()])
    condition, params = to_sql(parse_filter(data) if isinstance(data, dict) else data, "metadata")
    return {r[0] for r in db.execute(f"SELECT id FROM t WHERE {condition}", params)}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"type": "eq", "key": "year", "value": 2020}, {"a"}),  # the string "2020" is not 2020
        ({"type": "eq", "key": "year", "value": "2020"}, {"c"}),
        ({"type": "eq", "key": "public", "value": True}, {"a"}),  # 1 is not true
        (
            {"type": "ne", "key": "topic", "value": "space"},
            {"b", "d", "e", "f"},
        ),  # missing keys are not equal
        ({"type": "gt", "key": "year", "value": 2020}, {"b"}),
        ({"type": "gte", "key": "score", "value": 3}, {"a", "b"}),
        ({"type": "lt", "key": "score", "value": 4.5}, {"b"}),
        ({"type": "lte", "key": "topic", "value": "music"}, {"b", "d"}),  # strings order as strings
        ({"type": "in", "key": "topic", "value": ["food", "music"]}, {"b", "d"}),
        ({"type": "nin", "key": "topic", "value": ["food", "music"]}, {"a", "c", "e", "f"}),
        ({"type": "in", "key": "public", "value": [False, 4.5, "x"]}, {"b"}),  # typed as JSON is
        ({"type": "in", "key": "score", "value": [True, 3, "4.5"]}, {"b"}),
        (
            {
                "type": "or",
                "filters": [
                    {
                        "type": "and",
                        "filters": [
                            {"type": "eq", "key": "topic", "value": "space"},
                            {"type": "eq", "key": "public", "value": True},
                        ],
                    },
                    {"type": "eq", "key": "topic", "value": "music"},
                ],
            },
            {"a", "d"},
        ),
    ],
)
def test_filters_admit_what_openai_documents(data: dict[str, Any], expected: set[str]) -> None:
    assert admitted(data) == expected
    assert to_json(parse_filter(data)) == data


@pytest.mark.parametrize(
    ("key", "value"),
    [("größe", 3), ("类别", "hr"), ('a"b', 1), ("a\\b", "x")],
    ids=["latin", "cjk", "quote", "backslash"],
)
def test_any_key_can_be_compared(key: str, value: Any) -> None:
    """Keys a JSON path cannot name as stored (escaped non-ASCII, a quote, a backslash) still match."""
    assert admitted({"type": "eq", "key": key, "value": value}) == {"f"}
    assert admitted({"type": "ne", "key": key, "value": value}) == set(ROWS) - {"f"}
    assert admitted({"type": "in", "key": key, "value": [value, "other"]}) == {"f"}
    equalities = from_equalities({key: value})
    assert equalities is not None and admitted(equalities) == {"f"}


def test_wide_filters_are_answered_and_the_widest_refused() -> None:
    """SQLite bounds an expression's depth (1,000): long lists and many comparisons still make a query."""
    many = [*range(3000, 3000 + MAX_VALUES - 1), 2021]
    assert admitted({"type": "in", "key": "year", "value": many}) == {"b"}
    assert admitted({"type": "nin", "key": "year", "value": many}) == set(ROWS) - {"b"}
    alternatives = [
        {"type": "eq", "key": "year", "value": y} for y in range(3000, 3000 + MAX_COMPARISONS - 1)
    ]
    assert admitted(
        {"type": "or", "filters": [*alternatives, {"type": "eq", "key": "topic", "value": "music"}]}
    ) == {"d"}
    equalities = from_equalities({f"k{i}": i for i in range(MAX_COMPARISONS - 1)} | {"topic": "music"})
    assert equalities is not None and admitted(equalities) == set()
    with pytest.raises(InvalidRequest, match="comparisons") as info:
        parse_filter({"type": "and", "filters": [*alternatives, *alternatives]})
    assert info.value.param == "filters"
    with pytest.raises(InvalidRequest, match="values"):
        parse_filter({"type": "in", "key": "year", "value": [*many, 1]})
    with pytest.raises(InvalidRequest, match="comparisons") as info:
        from_equalities({f"k{i}": i for i in range(MAX_COMPARISONS + 1)})
    assert info.value.param == "filter"


def test_equalities_are_an_and_of_eq() -> None:
    f = from_equalities({"topic": "space", "year": 2020})
    assert f is not None and to_json(f)["type"] == "and"
    assert from_equalities({}) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"type": "like", "key": "a", "value": 1}, "type must be one of"),
        ({"type": "eq", "value": 1}, "non-empty string `key`"),
        ({"type": "eq", "key": "a"}, "needs a `value`"),
        ({"type": "eq", "key": "a", "value": {"x": 1}}, "string, number or boolean"),
        ({"type": "gt", "key": "a", "value": True}, "not booleans"),
        ({"type": "in", "key": "a", "value": "x"}, "non-empty list"),
        ({"type": "and", "filters": []}, "non-empty `filters`"),
        ({"type": "in", "key": "a", "value": [99999999999999999999]}, "outside"),
        ({"type": "eq", "key": "a", "value": 2**63}, "outside"),
        ({"type": "lt", "key": "a", "value": -(2**63) - 1}, "outside"),
    ],
)
def test_malformed_filters_are_400s_naming_the_parameter(data: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        parse_filter(data)
    assert info.value.param == "filters"


def test_nesting_is_bounded() -> None:
    data: dict[str, Any] = {"type": "eq", "key": "a", "value": 1}
    for _ in range(12):
        data = {"type": "and", "filters": [data]}
    with pytest.raises(InvalidRequest, match="deeper"):
        parse_filter(data)


def test_integers_at_sqlites_bounds_are_compared() -> None:
    assert admitted({"type": "in", "key": "year", "value": [2**63 - 1, -(2**63), 2020]}) == {"a"}
    assert admitted({"type": "gt", "key": "year", "value": -(2**63)}) == {"a", "b"}
