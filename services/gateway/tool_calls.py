"""``tools``, ``tool_choice`` and ``parallel_tool_calls`` → the tools to render in the prompt and the grammar
that shapes the calls.

Calls are written as ``pipelines.llm.tool_prompt`` describes; the grammar (an xgrammar structural tag)
makes every call well formed with arguments that follow that function's ``parameters``:
``auto`` leaves text free until the model opens a call (or, with a ``response_format``, allows calls or an
answer in that format); ``required`` allows only calls (at least one);
a named function allows exactly one call of it. Without ``parallel_tool_calls`` the answer ends after
the first call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines.llm.tool_prompt import ARGUMENTS_HEAD, CALL_HEAD, CALL_TAIL, TOOL_CALL_BEGIN
from services.gateway.constraints import checked
from services.gateway.tool_schemas import Tool, ToolChoice, ToolChoiceFunction
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding, GuidedKind, json_grammar, strict_mode_form

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    """``tools``: the functions for the prompt (OpenAI's shape); ``guided``: the grammar for the calls
    (None: no tools in play, the answer is plain text); ``named``: ``tool_choice`` names the function,
    and as in OpenAI's API (and vLLM) its call ends with ``finish_reason`` "stop", not "tool_calls"."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    guided: GuidedDecoding | None = None
    named: bool = False
    calls_or_answer: bool = False  # the grammar allows calls or an answer in a format, not both

    @property
    def active(self) -> bool:
        return self.guided is not None


def _function(tool: Tool, i: int) -> dict[str, Any]:
    param = "tools"
    if tool.type != "function":
        raise InvalidRequest(f"tools[{i}]: type {tool.type!r} is not supported; use 'function'", param=param)
    f = tool.function
    if f is None or not f.name:
        raise InvalidRequest(f"tools[{i}]: function.name is required", param=param)
    if not _NAME.match(f.name):
        raise InvalidRequest(
            f"tools[{i}]: function name {f.name!r} must be 1-64 letters, digits, '_', '-' or '.'", param=param
        )
    parameters = _object_schema(f.parameters)
    if parameters is None:
        raise InvalidRequest(
            f"tools[{i}] ({f.name}): parameters must be a JSON schema of type 'object' (a call's arguments "
            f"are a JSON object): give 'type': 'object' or 'properties'; got {json.dumps(f.parameters)[:99]}",
            param=param,
        )
    try:
        checked(GuidedDecoding.json_schema(parameters), f"tools[{i}] ({f.name}) parameters")
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc), param=param) from None
    out: dict[str, Any] = {"name": f.name, "parameters": parameters}
    if f.description:
        out["description"] = f.description
    return out


def _object_schema(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """A function's parameters as a schema of type object (absent or {}: no arguments), or None where
    they may describe something else (a string, an enum, a reference)."""
    if not parameters:
        return NO_PARAMETERS
    declared = parameters.get("type")
    if declared in ("object", ["object"]):
        return {**parameters, "type": "object"}
    if declared is None and "properties" in parameters and not _ALTERNATIVES & parameters.keys():
        return {"type": "object", **parameters}
    return None


_ALTERNATIVES = frozenset({"anyOf", "oneOf", "allOf", "$ref", "enum", "const"})


class OffersTools(Protocol):
    """A body's tool fields: a chat completion's, or /tokenize's for the same prompt."""

    @property
    def tools(self) -> list[Tool] | None: ...
    @property
    def tool_choice(self) -> ToolChoice: ...
    @property
    def parallel_tool_calls(self) -> bool | None: ...


def _choice(body: OffersTools, names: list[str]) -> str:
    """ "none", "auto", "required", or the name of the function that must be called."""
    choice = body.tool_choice
    if choice is None:
        return "auto" if names else "none"
    if isinstance(choice, ToolChoiceFunction):
        name = choice.function.name if choice.function else None
        if choice.type != "function" or not name:
            raise InvalidRequest(
                "tool_choice: an object must be {'type': 'function', 'function': {'name': ...}}",
                param="tool_choice",
            )
        if name not in names:
            offered = ", ".join(repr(n) for n in names) or "none"
            raise InvalidRequest(
                f"tool_choice names function {name!r}, which is not in tools (offered: {offered})",
                param="tool_choice",
            )
        return name
    if choice not in ("none", "auto", "required"):
        raise InvalidRequest(
            f"tool_choice must be 'none', 'auto', 'required' or a named function; got {choice!r}",
            param="tool_choice",
        )
    if choice != "none" and not names:
        raise InvalidRequest(f"tool_choice {choice!r} needs tools", param="tool_choice")
    return choice


def _tag(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tag",
        "begin": f"{CALL_HEAD}{function['name']}{ARGUMENTS_HEAD}",
        # A bound on runs of whitespace keeps a small model from looping on newlines inside the arguments.
        "content": _json(function["parameters"]),
        "end": CALL_TAIL,
    }


def _json(schema: Any) -> dict[str, Any]:
    # A bound on runs of whitespace keeps a small model from looping on newlines inside the JSON.
    return {"type": "json_schema", "json_schema": strict_mode_form(schema), "max_whitespace_cnt": 8}


def _answer(guided: GuidedDecoding) -> dict[str, Any]:
    """The structural-tag form of an output constraint: what an answer that calls no tool follows."""
    if guided.kind is GuidedKind.JSON_SCHEMA:  # on one line, as the same schema's answer without tools
        return {"type": "grammar", "grammar": json_grammar(guided.spec)}
    if guided.kind is GuidedKind.JSON_OBJECT:
        return {"type": "grammar", "grammar": json_grammar('{"type": "object"}')}
    if guided.kind is GuidedKind.REGEX:
        return {"type": "regex", "pattern": guided.spec}
    if guided.kind is GuidedKind.CHOICE:
        return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in guided.choices]}
    if guided.kind is GuidedKind.GRAMMAR:
        return {"type": "grammar", "grammar": guided.spec}
    raise ValueError(f"no answer format for {guided.kind}")


def _structural_tag(
    functions: list[dict[str, Any]], choice: str, parallel: bool, answer: GuidedDecoding | None
) -> dict[str, Any]:
    tags = [_tag(f) for f in functions]
    calls = {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": "\n",
        "at_least_one": True,
        "stop_after_first": not parallel,
    }
    if choice == "auto" and answer is not None:  # calls, or an answer in the asked format
        fmt: dict[str, Any] = {"type": "or", "elements": [calls, _answer(answer)]}
    elif choice == "auto":
        fmt = {
            "type": "triggered_tags",
            "triggers": [TOOL_CALL_BEGIN],
            "tags": tags,
            "stop_after_first": not parallel,
        }
    elif choice == "required":
        fmt = calls
    else:
        fmt = next(t for t, f in zip(tags, functions, strict=True) if f["name"] == choice)
    return {"type": "structural_tag", "format": fmt}


def plan_tools(body: OffersTools, answer: GuidedDecoding | None = None) -> ToolPlan:
    """Validate the body's tool fields (400s name the parameter) and plan the prompt and grammar.
    ``answer``: the format an answer that calls no tool must follow (``response_format``), where the
    model may answer instead of calling (``tool_choice`` "auto")."""
    functions = [_function(t, i) for i, t in enumerate(body.tools or ())]
    names = [f["name"] for f in functions]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InvalidRequest(f"tools: function {duplicate!r} is defined twice", param="tools")
    choice = _choice(body, names)
    if choice == "none":
        return ToolPlan()
    parallel = body.parallel_tool_calls is not False
    spec = json.dumps(_structural_tag(functions, choice, parallel, answer), ensure_ascii=False)
    guided = GuidedDecoding(GuidedKind.STRUCTURAL_TAG, spec)
    checked(guided, "tools")
    named = choice not in ("auto", "required")
    offered = [{"type": "function", "function": f} for f in functions]
    return ToolPlan(offered, guided, named, calls_or_answer=choice == "auto" and answer is not None)
