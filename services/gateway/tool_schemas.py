"""Request and response bodies for structured outputs and tool calling (OpenAI's shapes, plus vLLM's
``guided_*`` and ``structured_outputs`` extras). Field-level rules that need a precise message (a tool
without a name, an unknown ``response_format.type``) are checked in ``constraints.py``, not here."""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class JsonSchemaFormat(Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    schema: dict[str, Any] | bool | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True):
    """``{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}``."""

    type: str
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's ``structured_outputs`` (exactly one field): ``json`` (a schema), ``json_object``, ``regex``,
    ``choice`` or ``grammar`` (EBNF)."""

    json: dict[str, Any] | bool | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class FunctionDefinition(Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, kw_only=True):
    type: str = "function"
    function: FunctionDefinition | None = None


class NamedFunction(Struct, kw_only=True):
    name: str | None = None


class ToolChoiceFunction(Struct, kw_only=True):
    """``{"type": "function", "function": {"name": ...}}``: this function must be called."""

    type: str = "function"
    function: NamedFunction | None = None


ToolChoice = str | ToolChoiceFunction | None  # "none", "auto", "required", or a named function


class FunctionCall(Struct, kw_only=True):
    name: str
    arguments: str  # the arguments object as JSON text


class ToolCall(Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: str = "function"
