"""``tools``, ``tool_choice`` and ``parallel_tool_calls`` → the tools to render in the prompt and the grammar
that shapes the calls.

Calls are written as ``pipelines.llm.tool_prompt`` describes; the grammar (an xgrammar structural tag)
makes every call well formed with arguments that follow that function's ``parameters``:
``auto`` leaves text free until the model opens a call; ``required`` allows only calls (at least one);
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
from shared_engine.guided import GuidedDecoding, GuidedKind

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
    parameters = NO_PARAMETERS if f.parameters is None else f.parameters
    try:
        checked(GuidedDecoding.json_schema(parameters), f"tools[{i}] ({f.name}) parameters")
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc), param=param) from None
    out: dict[str, Any] = {"name": f.name, "parameters": parameters}
    if f.description:
        out["description"] = f.description
    return out


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
        "content": {"type": "json_schema", "json_schema": function["parameters"], "max_whitespace_cnt": 8},
        "end": CALL_TAIL,
    }


def _structural_tag(functions: list[dict[str, Any]], choice: str, parallel: bool) -> dict[str, Any]:
    tags = [_tag(f) for f in functions]
    if choice == "auto":
        fmt = {
            "type": "triggered_tags",
            "triggers": [TOOL_CALL_BEGIN],
            "tags": tags,
            "stop_after_first": not parallel,
        }
    elif choice == "required":
        fmt = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": "\n",
            "at_least_one": True,
            "stop_after_first": not parallel,
        }
    else:
        fmt = next(t for t, f in zip(tags, functions, strict=True) if f["name"] == choice)
    return {"type": "structural_tag", "format": fmt}


def plan_tools(body: OffersTools) -> ToolPlan:
    """Validate the body's tool fields (400s name the parameter) and plan the prompt and grammar."""
    functions = [_function(t, i) for i, t in enumerate(body.tools or ())]
    names = [f["name"] for f in functions]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InvalidRequest(f"tools: function {duplicate!r} is defined twice", param="tools")
    choice = _choice(body, names)
    if choice == "none":
        return ToolPlan()
    parallel = body.parallel_tool_calls is not False
    spec = json.dumps(_structural_tag(functions, choice, parallel), ensure_ascii=False)
    guided = GuidedDecoding(GuidedKind.STRUCTURAL_TAG, spec)
    checked(guided, "tools")
    named = choice not in ("auto", "required")
    return ToolPlan([{"type": "function", "function": f} for f in functions], guided, named)
