"""What a request asks its output to follow: a JSON schema, any JSON object, a regular expression, one of
a few strings, an EBNF grammar, or a structural tag (free text with constrained tool calls).

This is the request's side only: a small value that travels in ``SamplingParams`` (and over gRPC). The
grammar engine that enforces it lives in ``shared_engine.structured_output``; ``check`` here tells, without
a tokenizer, whether that engine can enforce it, so a caller can refuse it before anything is queued.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import xgrammar as xgr

from shared_engine.errors import InvalidRequest
from shared_engine.json_schema_support import patterns, schema_objects, unsupported_feature


class GuidedKind(StrEnum):
    JSON_SCHEMA = "json_schema"  # spec: the schema, as JSON text
    JSON_OBJECT = "json_object"  # spec: unused; any JSON object
    REGEX = "regex"  # spec: the pattern
    CHOICE = "choice"  # spec: a JSON list of the strings allowed
    GRAMMAR = "grammar"  # spec: EBNF (xgrammar's dialect of GBNF)
    STRUCTURAL_TAG = "structural_tag"  # spec: xgrammar's structural tag, as JSON text


@dataclass(frozen=True)
class GuidedDecoding:
    """The constraint on one request's output. Equal constraints share one compiled grammar."""

    kind: GuidedKind
    spec: str = ""

    @classmethod
    def json_schema(cls, schema: object) -> GuidedDecoding:
        return cls(GuidedKind.JSON_SCHEMA, json.dumps(schema, separators=(",", ":")))

    @classmethod
    def choice(cls, choices: list[str]) -> GuidedDecoding:
        return cls(GuidedKind.CHOICE, json.dumps(list(choices)))

    @property
    def choices(self) -> list[str]:
        items = json.loads(self.spec)
        if not isinstance(items, list) or not items or not all(isinstance(c, str) and c for c in items):
            raise GrammarError("the choices must be a non-empty list of non-empty strings")
        return items

    def ebnf(self) -> str:
        """The EBNF of a CHOICE constraint: one literal per choice (JSON string escapes are EBNF's too)."""
        return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in self.choices)


class GrammarError(InvalidRequest):
    """A constraint the grammar engine cannot compile or cannot enforce (a 400)."""


_ENGINE_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


def engine_message(exc: BaseException) -> str:
    """xgrammar's error without the C++ source location it starts with."""
    return _ENGINE_PREFIX.sub("", str(exc)).strip()


def check(guided: GuidedDecoding) -> None:
    """Raise ``GrammarError`` unless the grammar engine can compile ``guided`` and enforce all of it."""
    kind = guided.kind
    try:
        if kind is GuidedKind.JSON_SCHEMA:
            try:
                schema = json.loads(guided.spec)
            except json.JSONDecodeError as exc:
                raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
            if not isinstance(schema, dict | bool):
                raise GrammarError("a JSON schema must be an object (or a boolean)")
            feature = unsupported_feature(schema)
            if feature is not None:
                raise GrammarError(f"the JSON schema uses {feature}, which the grammar engine cannot enforce")
            for pattern in patterns(schema):
                try:
                    xgr.Grammar.from_regex(pattern)
                except Exception as exc:
                    raise GrammarError(
                        f"the JSON schema uses 'pattern' {pattern!r}, which the grammar engine cannot "
                        f"enforce: {engine_message(exc)}"
                    ) from None
            try:
                xgr.Grammar.from_json_schema(guided.spec)
            except Exception:  # see StructuredOutputs._compile: strict mode can refuse a valid schema
                xgr.Grammar.from_json_schema(guided.spec, strict_mode=False)
        elif kind is GuidedKind.REGEX:
            if not guided.spec or "\x00" in guided.spec:
                raise GrammarError("the regular expression must be non-empty and contain no NUL character")
            xgr.Grammar.from_regex(guided.spec)
        elif kind is GuidedKind.CHOICE:
            xgr.Grammar.from_ebnf(guided.ebnf())
        elif kind is GuidedKind.GRAMMAR:
            xgr.Grammar.from_ebnf(guided.spec)
        elif kind is GuidedKind.STRUCTURAL_TAG:
            xgr.Grammar.from_structural_tag(guided.spec)
    except GrammarError:
        raise
    except Exception as exc:  # xgrammar reports a bad schema, pattern or grammar as RuntimeError/ValueError
        raise GrammarError(f"invalid {kind.value.replace('_', ' ')}: {engine_message(exc)}") from None


def strict_mode_form(schema: Any) -> Any:
    """``schema`` as the engine's strict mode compiles it, with the meaning JSON Schema gives it. Strict
    mode (the only one structural tags have) reads a missing ``additionalProperties`` or ``items`` as
    false and refuses a schema that then contradicts itself (``{"type": "array", "minItems": 2}``);
    for such a schema they are written out as true."""
    try:
        xgr.Grammar.from_json_schema(json.dumps(schema))
        return schema
    except Exception:
        pass
    loosened = copy.deepcopy(schema)
    for node in schema_objects(loosened):
        if _of_type(node, "object", _OBJECT_KEYWORDS) and not _OPEN_ENDED_OBJECT & node.keys():
            node["additionalProperties"] = True
        if _of_type(node, "array", _ARRAY_KEYWORDS) and "items" not in node:
            node["items"] = True
    return loosened


_OBJECT_KEYWORDS = frozenset(
    {"properties", "required", "minProperties", "maxProperties", "patternProperties"}
)
_OPEN_ENDED_OBJECT = frozenset({"additionalProperties", "unevaluatedProperties"})
_ARRAY_KEYWORDS = frozenset({"prefixItems", "minItems", "maxItems"})


def _of_type(node: dict[str, Any], kind: str, keywords: frozenset[str]) -> bool:
    """Whether a schema object describes values of JSON type ``kind``: it says so, or (no type given) it
    uses that type's keywords."""
    declared = node.get("type")
    if declared is None:
        return bool(keywords & node.keys())
    return declared == kind or (isinstance(declared, list) and kind in declared)


def json_grammar(spec: str) -> str:
    """The grammar (EBNF) the engine holds a JSON schema's answers to, in the form they take on their
    own: one line, ", " and ": " between items; strict where strict mode takes the schema."""
    try:
        return str(xgr.Grammar.from_json_schema(spec, any_whitespace=False))
    except Exception:
        return str(xgr.Grammar.from_json_schema(spec, any_whitespace=False, strict_mode=False))
