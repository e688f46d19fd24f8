"""Which JSON Schema keywords the grammar engine (xgrammar) enforces, and which it would silently ignore
(or, for ``propertyNames``, get wrong: it then refuses every property name).

A keyword the engine ignores would let an answer through that the schema rejects, so a schema that uses
one is refused up front, naming it. The list was found by compiling a schema per keyword and feeding the
matcher an instance that violates only that keyword (tests/shared_engine/test_guided.py keeps it true).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Formats the engine turns into a pattern; any other format would be ignored.
SUPPORTED_FORMATS = frozenset(
    {
        "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
        "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
    }
)  # fmt: skip

_NEVER = ("not", "if", "then", "else", "contains", "minContains", "maxContains", "dependentRequired",
          "dependentSchemas", "dependencies", "additionalItems", "$dynamicRef", "$recursiveRef",
          "propertyNames")  # fmt: skip

# Keywords whose value is one subschema, a list of them, or a map of names to them.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
        "unevaluatedProperties", "unevaluatedItems")  # fmt: skip
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _subschemas(schema: dict[str, Any]) -> Iterator[Any]:
    for key in _ONE:
        if key in schema:
            value = schema[key]
            yield from value if key == "items" and isinstance(value, list) else (value,)
    for key in _LIST:
        if isinstance(schema.get(key), list):
            yield from schema[key]
    for key in _MAP:
        if isinstance(schema.get(key), dict):
            yield from schema[key].values()


def _own_feature(schema: dict[str, Any]) -> str | None:
    """The first keyword of this schema object (not its subschemas) the engine would not enforce."""
    for key in _NEVER:
        if key in schema:
            return f"'{key}'"
    if schema.get("uniqueItems") is True:
        return "'uniqueItems'"
    if isinstance(schema.get("items"), list):
        return "'items' as a list (use 'prefixItems')"
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) > 1:
        return "'allOf' with more than one schema"
    if "oneOf" in schema and "discriminator" not in schema:
        return "'oneOf' without a 'discriminator' (use 'anyOf')"
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt not in SUPPORTED_FORMATS:
        return f"'format': {fmt!r} (supported: {', '.join(sorted(SUPPORTED_FORMATS))})"
    if ("pattern" in schema or "format" in schema) and ("minLength" in schema or "maxLength" in schema):
        return "'minLength'/'maxLength' together with 'pattern' or 'format'"
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return f"a $ref outside the schema ({ref!r})"
    if isinstance(ref, str) and ref != "#" and not ref.startswith("#/"):
        return f"a $ref to an anchor ({ref!r}; use a JSON pointer such as '#/$defs/name')"
    required, properties = schema.get("required"), schema.get("properties")
    if isinstance(required, list):
        missing = [name for name in required if not (isinstance(properties, dict) and name in properties)]
        if missing:
            return f"'required' naming {missing[0]!r} without defining it in 'properties'"
    if "multipleOf" in schema and not (schema.get("type") == "integer" and type(schema["multipleOf"]) is int):
        return "'multipleOf' except as an integer on type 'integer'"
    for key in ("unevaluatedProperties", "unevaluatedItems"):
        if key in schema and not isinstance(schema[key], bool):
            return f"'{key}' with a schema"
    return None


def schema_objects(schema: Any) -> Iterator[dict[str, Any]]:
    """``schema`` and every subschema in it that is an object."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(_subschemas(node))


def unsupported_feature(schema: Any) -> str | None:
    """A description of the first keyword in ``schema`` (anywhere in it) that the engine would not
    enforce, or None when it enforces all of them."""
    return next(filter(None, map(_own_feature, schema_objects(schema))), None)


def patterns(schema: Any) -> Iterator[str]:
    """Every ``pattern`` in ``schema``, and every ``patternProperties`` name pattern: one the engine cannot
    read as a regular expression (a lookahead) it would ignore, leaving any string through."""
    for node in schema_objects(schema):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        if isinstance(node.get("patternProperties"), dict):
            yield from (key for key in node["patternProperties"] if isinstance(key, str))
