"""Tools offered in the tool-calling tests, and how a client reassembles streamed tool calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionChunk

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER,
        },
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
PARAMETERS = {"get_weather": WEATHER, "add": ADD}


@dataclass
class StreamedCall:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class ToolStream:
    content: str = ""
    calls: dict[int, StreamedCall] = field(default_factory=dict)
    finish_reason: str | None = None
    first_chunk_role: str | None = None


def read_tool_stream(chunks: Iterable[ChatCompletionChunk]) -> ToolStream:
    """Join a streamed answer the way OpenAI's clients do: content, and each call by its index (its id,
    type and name come once, its arguments in pieces)."""
    out = ToolStream()
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if out.first_chunk_role is None:
            out.first_chunk_role = delta.role
        out.content += delta.content or ""
        for piece in delta.tool_calls or ():
            call = out.calls.setdefault(piece.index, StreamedCall())
            if piece.id:
                assert call.id is None, "a call's id comes once"
                assert piece.type == "function"
                call.id = piece.id
            if piece.function is not None:
                call.name += piece.function.name or ""
                call.arguments += piece.function.arguments or ""
        out.finish_reason = choice.finish_reason or out.finish_reason
    return out
