"""What a request's tools and output constraint together let the model write, checked on the grammar
alone: an answer in the ``response_format`` or calls where the model may choose, calls only where it must
call; parameters that are not an object refused; a parameters schema the engine's strict mode refuses
(an array with ``minItems`` and no ``items``) held to as JSON Schema reads it."""

from __future__ import annotations

from typing import Any

import pytest
import xgrammar as xgr

from pipelines.llm.tool_prompt import format_call
from services.gateway.schemas import ChatCompletionRequest
from services.gateway.tool_calls import plan_tools
from services.gateway.tool_parser import ToolCallParser, parse_all
from services.gateway.tool_schemas import FunctionDefinition, NamedFunction, Tool, ToolChoiceFunction
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GuidedDecoding, GuidedKind
from tests.helpers.tools import WEATHER

CITY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
CALL = format_call("get_weather", '{"city": "Paris", "unit": "celsius"}')


def request(tool_choice: Any = None, parameters: Any = WEATHER) -> ChatCompletionRequest:
    tool = Tool(function=FunctionDefinition(name="get_weather", parameters=parameters))
    return ChatCompletionRequest(model="m", messages=[], tools=[tool], tool_choice=tool_choice)


def accepts(body: ChatCompletionRequest, text: str, answer: GuidedDecoding | None = None) -> bool:
    guided = plan_tools(body, answer).guided
    assert guided is not None
    grammar = xgr.Grammar.from_structural_tag(guided.spec)
    return bool(xgr.testing._is_grammar_accept_string(grammar, text))


def test_auto_with_a_response_format_allows_calls_or_an_answer_in_that_format() -> None:
    schema = GuidedDecoding.json_schema(CITY)
    assert accepts(request(), CALL, schema)
    assert accepts(request(), '{"name": "Lima", "population": 10000000}', schema)
    assert not accepts(request(), '{"name": "Lima"}', schema)  # the answer follows the schema
    assert not accepts(
        request(), '{\n"name": "Lima", "population": 1}', schema
    )  # on one line, as without tools
    assert not accepts(request(), "It is sunny in Paris.", schema)  # free text is no answer here
    assert accepts(request(), "It is sunny in Paris.")  # without a response_format it is
    choice = GuidedDecoding.choice(["yes", "no"])
    assert accepts(request(), "no", choice) and not accepts(request(), "maybe", choice)
    assert accepts(request(), '{"any": [1]}', GuidedDecoding(GuidedKind.JSON_OBJECT))


def test_a_required_or_named_call_ignores_the_response_format() -> None:
    schema = GuidedDecoding.json_schema(CITY)
    named = ToolChoiceFunction(function=NamedFunction(name="get_weather"))
    for choice in ("required", named):
        assert accepts(request(choice), CALL, schema)
        assert not accepts(request(choice), '{"name": "Lima", "population": 1}', schema)


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "string"},
        {"type": "array", "items": {}},
        {"enum": ["a", "b"]},
        {"anyOf": [{"type": "string"}]},
        {"$ref": "#/$defs/S", "$defs": {"S": {"type": "string"}}},
    ],
)
def test_parameters_must_describe_an_object(parameters: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="parameters must be a JSON schema of type 'object'") as info:
        plan_tools(request(parameters=parameters))
    assert info.value.param == "tools"


def test_empty_parameters_mean_no_arguments() -> None:
    body = request("required", parameters={})
    assert accepts(body, format_call("get_weather", "{}"))
    assert not accepts(body, format_call("get_weather", '"Paris"'))


def test_parameters_strict_mode_refuses_are_held_to_as_json_schema_reads_them() -> None:
    tags = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
        "required": ["tags"],
    }
    loose_array = {
        "type": "object",
        "properties": {"tags": {"type": "array", "minItems": 2}},
        "required": ["tags"],
    }
    for parameters in (tags, loose_array, {"type": "object", "minProperties": 1}):
        body = request("required", parameters=parameters)
        assert not accepts(body, format_call("get_weather", "{}"))
    body = request("required", parameters=loose_array)
    assert accepts(body, format_call("get_weather", '{"tags": ["a", 1]}'))
    assert not accepts(body, format_call("get_weather", '{"tags": ["a"]}'))


def test_parameters_without_a_type_or_with_a_list_of_one_are_an_object() -> None:
    for parameters in ({"properties": {"a": {"type": "integer"}}}, {"type": ["object"], "properties": {}}):
        body = request("required", parameters=parameters)
        assert accepts(body, format_call("get_weather", '{"a": 1}' if "type" not in parameters else "{}"))
        assert not accepts(body, format_call("get_weather", '"a"'))


@pytest.mark.parametrize(
    "answer", ['{"html": "a <tool_call> b"}', "<", "3 < 5 <", '{"text": "</tool_call>"}', "<tool"]
)
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_an_answer_in_a_format_beside_tools_is_content_whole(answer: str, size: int) -> None:
    """Where the grammar allows calls or an answer (tools with a response_format), an answer that does
    not begin with a call is content as it stands, streamed in pieces or parsed whole."""
    parsed = parse_all(answer, calls_or_answer=True)
    assert parsed.content == answer and not parsed.calls
    parser = ToolCallParser(calls_or_answer=True)
    pieces = [parser.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
    pieces.append(parser.feed("", final=True))
    assert "".join(p.content for p in pieces) == answer and not any(p.calls for p in pieces)
    call = parse_all(CALL, calls_or_answer=True)
    assert call.content == "" and [c.name for c in call.calls] == ["get_weather"]
