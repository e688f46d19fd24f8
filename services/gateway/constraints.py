"""A request's output constraint from its body: OpenAI's ``response_format``, or vLLM's ``guided_json``,
``guided_regex``, ``guided_choice``, ``guided_grammar`` and ``structured_outputs``. Anything the grammar
engine cannot compile or enforce is a 400 naming the parameter, before the request is queued."""

from __future__ import annotations

import json
from typing import Any

from services.gateway.schemas import SamplingFields
from services.gateway.tool_schemas import ResponseFormat, StructuredOutputsParams
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GrammarError, GuidedDecoding, GuidedKind, check

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _schema(value: Any, param: str) -> GuidedDecoding:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{param}: the JSON schema is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict | bool):
        raise InvalidRequest(f"{param}: a JSON schema must be an object", param=param)
    return GuidedDecoding.json_schema(value)


def _response_format(rf: ResponseFormat) -> GuidedDecoding | None:
    if rf.type == "text":
        return None
    if rf.type == "json_object":
        return GuidedDecoding(GuidedKind.JSON_OBJECT)
    if rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema is None:
            raise InvalidRequest(
                "response_format: type 'json_schema' needs json_schema.schema, the JSON schema to follow",
                param="response_format",
            )
        return _schema(rf.json_schema.schema, "response_format")
    known = ", ".join(repr(t) for t in RESPONSE_FORMAT_TYPES)
    raise InvalidRequest(
        f"response_format: unknown type {rf.type!r}; this server supports {known}", param="response_format"
    )


def _structured_outputs(so: StructuredOutputsParams) -> GuidedDecoding:
    given = [name for name in ("json", "json_object", "regex", "choice", "grammar") if getattr(so, name)]
    if len(given) != 1:
        raise InvalidRequest(
            "structured_outputs takes exactly one of json, json_object, regex, choice, grammar"
            + (f"; got {', '.join(given)}" if given else ""),
            param="structured_outputs",
        )
    name = given[0]
    if name == "json":
        return _schema(so.json, "structured_outputs")
    if name == "json_object":
        return GuidedDecoding(GuidedKind.JSON_OBJECT)
    if name == "choice":
        return GuidedDecoding.choice(list(so.choice or ()))
    return GuidedDecoding(GuidedKind.REGEX if name == "regex" else GuidedKind.GRAMMAR, str(getattr(so, name)))


def _candidates(body: SamplingFields) -> list[tuple[str, GuidedDecoding | None]]:
    found: list[tuple[str, GuidedDecoding | None]] = []
    if body.response_format is not None:
        found.append(("response_format", _response_format(body.response_format)))
    if body.guided_json is not None:
        found.append(("guided_json", _schema(body.guided_json, "guided_json")))
    if body.guided_regex is not None:
        found.append(("guided_regex", GuidedDecoding(GuidedKind.REGEX, body.guided_regex)))
    if body.guided_choice is not None:
        found.append(("guided_choice", GuidedDecoding.choice(body.guided_choice)))
    if body.guided_grammar is not None:
        found.append(("guided_grammar", GuidedDecoding(GuidedKind.GRAMMAR, body.guided_grammar)))
    if body.structured_outputs is not None:
        found.append(("structured_outputs", _structured_outputs(body.structured_outputs)))
    return found


def output_constraint(body: SamplingFields) -> tuple[GuidedDecoding | None, str | None]:
    """The constraint the body asks for and the parameter that asked (None, None: free text)."""
    found = _candidates(body)
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise InvalidRequest(f"only one output constraint may be given; got {names}", param=found[1][0])
    if not found or found[0][1] is None:
        return None, None
    param, guided = found[0]
    checked(guided, param)
    return guided, param


def checked(guided: GuidedDecoding | None, param: str) -> None:
    """Refuse (400, naming ``param``) a constraint the grammar engine cannot compile or enforce."""
    if guided is None:
        return
    try:
        check(guided)
    except GrammarError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param) from None
