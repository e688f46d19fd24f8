"""Tool calls without a server: the grammar a request's tool fields make accepts exactly the calls they
allow, and the parser turns text into content and calls the same way however the text is chunked."""

from __future__ import annotations

import json
from typing import Any

import pytest
import xgrammar as xgr

from pipelines.llm.tool_prompt import format_call, generic_messages
from services.gateway.schemas import ChatCompletionRequest
from services.gateway.tool_calls import plan_tools
from services.gateway.tool_parser import ToolCallParser, parse_all
from services.gateway.tool_schemas import FunctionDefinition, NamedFunction, Tool, ToolChoiceFunction
from shared_engine.errors import InvalidRequest
from tests.helpers.tools import ADD, WEATHER

PARIS = format_call("get_weather", '{"city": "Paris", "unit": "celsius"}')
SUM = format_call("add", '{"a": 2, "b": 40}')
BAD_SUM = format_call("add", '{"a": "two", "b": 1}')
NESTED = format_call("add", '{"a": {"b}": [1, {}]}, "b": 2}')


def body(tool_choice: Any = None, parallel: bool | None = None) -> ChatCompletionRequest:
    tools = [
        Tool(function=FunctionDefinition(name="get_weather", parameters=WEATHER)),
        Tool(function=FunctionDefinition(name="add", parameters=ADD)),
    ]
    return ChatCompletionRequest(
        model="m", messages=[], tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel
    )


def accepts(request: ChatCompletionRequest, text: str) -> bool:
    guided = plan_tools(request).guided
    assert guided is not None
    grammar = xgr.Grammar.from_structural_tag(guided.spec)
    return bool(xgr.testing._is_grammar_accept_string(grammar, text))


@pytest.mark.parametrize(
    ("choice", "parallel", "text", "allowed"),
    [
        ("required", None, PARIS, True),
        ("required", None, f"{PARIS}\n{SUM}", True),
        ("required", False, f"{PARIS}\n{SUM}", False),  # one call only
        ("required", None, "It is sunny.", False),  # text is no call
        ("required", None, format_call("get_weather", '{"city": "Paris"}'), False),  # unit is required
        ("required", None, format_call("fly", "{}"), False),  # not a tool
        ("auto", None, "It is sunny.", True),
        ("auto", None, f"Let me look. {PARIS}", True),
        ("auto", None, f"Let me look. {BAD_SUM}", False),
        (ToolChoiceFunction(function=NamedFunction(name="add")), None, SUM, True),
        (ToolChoiceFunction(function=NamedFunction(name="add")), None, PARIS, False),
    ],
)
def test_the_grammar_allows_exactly_the_calls_asked_for(
    choice: Any, parallel: bool | None, text: str, allowed: bool
) -> None:
    assert accepts(body(choice, parallel), text) == allowed


def test_none_and_no_tools_mean_plain_text() -> None:
    assert plan_tools(body("none")).guided is None
    assert plan_tools(ChatCompletionRequest(model="m", messages=[])).guided is None
    tools = body().tools or []
    with pytest.raises(InvalidRequest, match="defined twice"):
        plan_tools(ChatCompletionRequest(model="m", messages=[], tools=tools * 2))


TEXT = f"Checking. {PARIS}\n{NESTED}\nDone."


def streamed(text: str, size: int) -> tuple[str, list[tuple[str | None, str]], int]:
    """``text`` fed to a parser ``size`` characters at a time: its content, its calls' names and arguments
    as the pieces add up, and how many calls it saw end."""
    parser, content, calls = ToolCallParser(), "", dict[int, tuple[str | None, str]]()
    for start in range(0, len(text), size):
        pieces = parser.feed(text[start : start + size], final=start + size >= len(text))
        content += pieces.content
        for piece in pieces.calls:
            if piece.id is not None:
                assert piece.index not in calls
                calls[piece.index] = (piece.name, piece.arguments)
            else:
                name, arguments = calls[piece.index]
                calls[piece.index] = (name, arguments + piece.arguments)
    return content, list(calls.values()), parser.num_complete


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 1000])
def test_streamed_pieces_add_up_to_the_whole(size: int) -> None:
    whole = parse_all(TEXT)
    content, calls, _ = streamed(TEXT, size)
    assert content == whole.content == "Checking. Done."
    assert calls == [(c.name, c.arguments) for c in whole.calls]
    assert [json.loads(args) for _, args in calls] == [
        {"city": "Paris", "unit": "celsius"},
        {"a": {"b}": [1, {}]}, "b": 2},
    ]
    assert whole.num_complete == 2 and len({c.id for c in whole.calls}) == 2


@pytest.mark.parametrize(
    "arguments",
    [
        '{"text": "a</tool_call>b"}',
        '{"text": "}\\n</tool_call>"}',  # the call's own tail, escaped as JSON writes a line break
        '{"text": "} </tool_call>", "n": 1}',
        '{"open": "{", "close": "}", "end": "</tool_call>"}',
        '{"text": "say \\"}\\"", "end": "</tool_call>"}',  # an escaped quote does not end the string
        '{"path": "C:\\\\", "end": "}</tool_call>"}',  # an escaped backslash does not escape the quote
        '{"a": {"b": [1, {"c": "]}</tool_call>"}], "d": []}, "e": "{"}',
    ],
)
def test_arguments_end_where_their_json_object_does(arguments: str) -> None:
    """Braces, quotes and the call's end tag inside an argument string are part of the arguments."""
    text = f"Writing. {format_call('write_file', arguments)}\n{SUM}\nDone."
    whole = parse_all(text)
    expected = [("write_file", arguments), ("add", '{"a": 2, "b": 40}')]
    assert (whole.content, [(c.name, c.arguments) for c in whole.calls]) == ("Writing. Done.", expected)
    assert whole.num_complete == 2 and isinstance(json.loads(arguments), dict)
    for size in range(1, len(text) + 1):
        assert streamed(text, size) == ("Writing. Done.", expected, 2), size


def test_a_call_cut_short_stays_incomplete() -> None:
    cut = parse_all(PARIS[:-20])
    assert len(cut.calls) == 1 and cut.num_complete == 0
    assert cut.calls[0].arguments.startswith('{"city": "Paris"')


@pytest.mark.parametrize("size", [1, 3, 1000])
@pytest.mark.parametrize("cut", ["", "}", "}\n", "}\n</", "}\n</tool_call"])
@pytest.mark.parametrize("arguments", ['{"a": {"b": "}"}}', '{"a": "}\\n</tool_call>"}'])
def test_a_call_cut_short_after_its_arguments_keeps_only_the_arguments(
    arguments: str, cut: str, size: int
) -> None:
    """Cut by max_tokens between the arguments and the call's end: neither the call's closing brace nor
    the start of its end tag is part of the arguments, streamed or not."""
    text = '<tool_call>\n{"name": "f", "arguments": ' + arguments + cut
    assert streamed(text, size) == ("", [("f", arguments)], 0)
    assert parse_all(text).calls[0].arguments == arguments
    assert parse_all(text).num_complete == 0


@pytest.mark.parametrize(
    ("text", "content", "num_calls"),
    [
        ("<", "", 0),
        ("<tool_", "", 0),
        ("<tool_call>", "", 0),
        ('<tool_call>\n{"name', "", 0),
        ('<tool_call>\n{"name": "get_', "", 0),
        ("Let me look. <tool_c", "Let me look. ", 0),
        ('Let me look.\n<tool_call>\n{"name": "get_weather", "argu', "Let me look.\n", 0),
        (f"{SUM}\n<tool", "", 1),
        (f'{SUM}\n<tool_call>\n{{"name": "ad', "", 1),
    ],
)
def test_an_answer_cut_short_in_the_markup_of_a_call_shows_none_of_it(
    text: str, content: str, num_calls: int
) -> None:
    """Cut (max_tokens, a stop string) before a call's arguments begin: no content, no call."""
    whole = parse_all(text)
    assert (whole.content, len(whole.calls), whole.num_complete) == (content, num_calls, num_calls)
    for size in range(1, len(text) + 1):
        content_streamed, calls, num_complete = streamed(text, size)
        assert (content_streamed, len(calls), num_complete) == (content, num_calls, num_calls), size


@pytest.mark.parametrize(("text", "content"), [("a<", "a<"), ("if a<t", "if a<t"), ("a <", "a ")])
def test_a_cut_answer_keeps_a_last_less_than_sign_only_where_no_call_could_begin(
    text: str, content: str
) -> None:
    """Right after a word a "<" is prose; after a space it could begin a call, whose start is dropped."""
    assert parse_all(text).content == content
    assert all(streamed(text, size)[0] == content for size in range(1, len(text) + 1))


def test_the_generic_prompt_lists_tools_and_replays_calls_and_results() -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": ADD}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 40}'}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 40?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    out = generic_messages(messages, tools)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.") and '"name": "add"' in out[0]["content"]
    assert out[2]["content"] == SUM
    assert out[3]["content"] == "<tool_response>\n42\n</tool_response>"
