"""Tool calling through the API on the real model: tools rendered into the prompt, calls parsed into
``message.tool_calls`` (also streamed as ``delta.tool_calls``), forced calls whose arguments follow the
function's parameters, tool results accepted back in the conversation; the openai SDK's and, where it is
installed, LangChain's tool helpers work against it. Runs again through the gRPC topology."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers.tools import PARAMETERS, WEATHER_TOOLS, read_tool_stream

QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def create(client: openai.OpenAI, model_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", QUESTION)
    kwargs.setdefault("max_tokens", 64)
    return client.chat.completions.create(model=model_id, tools=WEATHER_TOOLS, **kwargs)  # type: ignore[call-overload]


def check_call(call: Any, name: str | None = None) -> dict[str, Any]:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in PARAMETERS and (name is None or call.function.name == name)
    arguments: dict[str, Any] = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PARAMETERS[call.function.name])
    return arguments


def test_a_named_function_is_called_with_valid_arguments(client: openai.OpenAI, model_id: str) -> None:
    choice = create(client, model_id, tool_choice=NAMED, temperature=1.0, seed=3).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    check_call(call, "get_weather")


def test_a_named_call_finishes_with_stop_streamed_or_not(client: openai.OpenAI, model_id: str) -> None:
    """OpenAI's API ends a call forced by naming the function with "stop" ("tool_calls" is for auto and
    required); vLLM does the same."""
    kwargs: dict[str, Any] = dict(tool_choice=NAMED, temperature=0.7, seed=9)
    plain = create(client, model_id, **kwargs).choices[0]
    streamed = read_tool_stream(create(client, model_id, stream=True, **kwargs))
    assert plain.finish_reason == streamed.finish_reason == "stop"
    (call,) = plain.message.tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in streamed.calls.values()] == [
        ("get_weather", check_call(call, "get_weather"))
    ]


def test_required_with_parallel_calls_off_makes_exactly_one_call(
    client: openai.OpenAI, model_id: str
) -> None:
    completion = create(
        client, model_id, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=1, n=3
    )
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        assert len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0])
    ids = [c.message.tool_calls[0].id for c in completion.choices]
    assert len(set(ids)) == len(ids)


def test_streamed_tool_calls_match_the_non_streamed_answer(client: openai.OpenAI, model_id: str) -> None:
    kwargs: dict[str, Any] = dict(tool_choice="required", temperature=0.7, seed=9)
    plain = create(client, model_id, **kwargs).choices[0]
    streamed = read_tool_stream(create(client, model_id, stream=True, **kwargs))
    assert streamed.first_chunk_role == "assistant"
    assert streamed.finish_reason == plain.finish_reason == "tool_calls"
    assert streamed.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in streamed.calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in plain.message.tool_calls
    ]
    assert all(c.id and c.id.startswith("call_") for c in streamed.calls.values())


def test_tool_choice_none_and_auto_answer_in_text(client: openai.OpenAI, model_id: str) -> None:
    none = create(client, model_id, tool_choice="none", max_tokens=16, temperature=0).choices[0]
    assert none.message.tool_calls is None and none.message.content
    auto = create(client, model_id, max_tokens=32, temperature=0).choices[0]
    if auto.message.tool_calls:  # the model may call; then the call is well formed
        assert auto.finish_reason == "tool_calls"
        for call in auto.message.tool_calls:
            check_call(call)
    else:
        assert auto.message.content and auto.finish_reason in ("stop", "length")


def test_a_tool_result_continues_the_conversation(client: openai.OpenAI, model_id: str) -> None:
    first = create(client, model_id, tool_choice=NAMED, temperature=0).choices[0].message
    call = first.tool_calls[0]
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    answer = create(
        client, model_id, messages=messages, tool_choice="none", max_tokens=24, temperature=0
    ).choices[0]
    assert answer.message.content and answer.message.tool_calls is None


class Add(BaseModel):
    """Add two integers."""

    a: int = Field(ge=0, le=1000)
    b: int = Field(ge=0, le=1000)


def test_the_sdk_parses_pydantic_function_tools(client: openai.OpenAI, model_id: str) -> None:
    completion = client.chat.completions.parse(
        model=model_id,
        messages=[{"role": "user", "content": "What is 2 plus 40?"}],
        tools=[openai.pydantic_function_tool(Add)],
        tool_choice={"type": "function", "function": {"name": "Add"}},
        max_tokens=40,
        temperature=0,
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call.function.parsed_arguments, Add)


def test_an_answer_cut_inside_a_call_header_shows_none_of_its_markup(
    client: openai.OpenAI, model_id: str
) -> None:
    """max_tokens ending the answer before the function's name is whole: no call, and the call format is
    not handed back as prose, streamed or not."""
    for max_tokens in (2, 6):
        kwargs: dict[str, Any] = dict(tool_choice="required", max_tokens=max_tokens, temperature=0)
        plain = create(client, model_id, **kwargs).choices[0]
        streamed = read_tool_stream(create(client, model_id, stream=True, **kwargs))
        assert plain.finish_reason == streamed.finish_reason == "length"
        assert not plain.message.tool_calls and not streamed.calls
        assert plain.message.content is None and streamed.content == ""  # null, as in a call's turn


class Sum(BaseModel):
    total: int
    explanation: str = Field(max_length=60)


def test_tools_with_a_response_format_call_a_tool_or_answer_in_it(
    client: openai.OpenAI, model_id: str
) -> None:
    """OpenAI's API takes both (the Agents SDK sends both for an agent with tools and an output type):
    the model either calls a tool or answers in the schema, and parse() reads either."""
    for seed in range(6):
        message = (
            client.chat.completions.parse(
                model=model_id,
                messages=[{"role": "user", "content": "What is 2 plus 40? Use the tool if you like."}],
                tools=[openai.pydantic_function_tool(Add)],
                parallel_tool_calls=False,
                response_format=Sum,
                max_tokens=100,
                temperature=1.0,
                seed=seed,
            )
            .choices[0]
            .message
        )
        if message.tool_calls:
            assert isinstance(message.tool_calls[0].function.parsed_arguments, Add)
        else:
            assert isinstance(message.parsed, Sum)


def test_parameters_that_are_no_object_are_refused(client: openai.OpenAI, model_id: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError, match="type 'object'") as refused:
        client.chat.completions.create(model=model_id, messages=QUESTION, tools=[tool])  # type: ignore[arg-type]
    assert refused.value.body["param"] == "tools"  # type: ignore[index]


def test_langchain_structured_output_and_bound_tools(base_url: str, model_id: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")

    class City(BaseModel):
        """A city and its country."""

        city: str = Field(max_length=30)
        country: str = Field(max_length=30)

    llm = langchain_openai.ChatOpenAI(
        model=model_id,
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        temperature=0,
        max_tokens=48,
    )
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(City, method=method).invoke("Name a city in France.")
        assert isinstance(result, City), method

    bound = llm.bind_tools([Add], tool_choice="Add")
    message = bound.invoke("What is 2 plus 40?")
    (call,) = message.tool_calls
    assert call["name"] == "Add" and Add.model_validate(call["args"])
