"""Tools in a chat prompt: through the model's chat template when it renders tools, else a generic prompt.

Either way a model calls a tool by writing, once per call (the format of Hermes and Qwen models)::

    <tool_call>
    {"name": "<function name>", "arguments": {<arguments>}}
    </tool_call>

The generic prompt lists the tools' JSON schemas in the system message and asks for exactly that; earlier
calls in the conversation are written back in it, and tool results come back as user turns wrapped in
``<tool_response>`` (templates without tools may know no ``tool`` role).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TOOL_CALL_BEGIN = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
CALL_HEAD = TOOL_CALL_BEGIN + '\n{"name": "'  # then the name, then:
ARGUMENTS_HEAD = '", "arguments": '  # then the arguments object, then:
CALL_TAIL = "}\n" + TOOL_CALL_END

_INSTRUCTIONS = """# Tools

You may call one or more of these functions to answer the user. Their signatures, as JSON schemas:
<tools>
{tools}
</tools>

To call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}
</tool_call>"""


def format_call(name: str, arguments: str) -> str:
    """One call as the model is asked to write it (``arguments``: the JSON text of the object)."""
    return f"{CALL_HEAD}{name}{ARGUMENTS_HEAD}{arguments}{CALL_TAIL}"


def template_renders_tools(chat_template: str | None) -> bool:
    """True when the chat template reads the ``tools`` it is given (else it would silently drop them)."""
    return bool(chat_template) and "tools" in str(chat_template)


def hf_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as tool-aware Hugging Face templates expect them: a call's arguments as an object."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {"type": "function", "function": {**c["function"], "arguments": _as_object(c["function"])}}
                for c in m["tool_calls"]
            ]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _as_object(function: dict[str, Any]) -> Any:
    try:
        return json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        return function.get("arguments")


def generic_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, str]]:
    """Plain role/content messages that carry the tools, the earlier calls and their results."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = str(m.get("content") or "")
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        calls = [
            format_call(c["function"]["name"], c["function"].get("arguments") or "{}")
            for c in m.get("tool_calls") or ()
        ]
        text = "\n".join(part for part in (content, *calls) if part)
        out.append({"role": str(m["role"]), "content": text})
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        instructions = _INSTRUCTIONS.format(tools=listed)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out
