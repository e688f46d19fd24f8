"""Structured outputs and tool calls through the API, driven by the openai SDK (and LangChain where it is
installed), on the real server and model: JSON schemas, regexes and choices are followed, tools are called
with arguments that follow their parameters (also streamed), and bad constraints are 400s naming the
parameter. Runs again through the gRPC topology (Makefile API_SUITES)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers.tools import WEATHER_TOOLS


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=130)
    city: Literal["Paris", "Tokyo", "Lima"]


PERSON_SCHEMA = openai.lib._pydantic.to_strict_json_schema(Person)


def ask(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model_id: str) -> None:
    completion = client.chat.completions.parse(
        model=model_id,
        messages=ask("Describe a person."),
        response_format=Person,
        max_tokens=60,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    assert choice.message.parsed == Person.model_validate_json(choice.message.content or "")


def test_every_stopped_answer_validates_at_high_temperature(client: openai.OpenAI, model_id: str) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
    }
    completion = client.chat.completions.create(
        model=model_id,
        messages=ask("Invent a character."),
        response_format=response_format,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=1.5,
        seed=11,
        n=4,
    )
    stopped = [c for c in completion.choices if c.finish_reason == "stop"]
    for c in stopped:
        jsonschema.validate(json.loads(c.message.content or ""), PERSON_SCHEMA)
    for c in completion.choices:
        assert c.finish_reason in ("stop", "length")
    assert stopped, [c.message.content for c in completion.choices]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_complete_document_ends_even_short_of_min_tokens(
    client: openai.OpenAI, model_id: str, temperature: float
) -> None:
    """min_tokens bars the end of sequence, but a finished grammar allows nothing else: the end wins."""
    short = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 5}},
        "required": ["name"],
    }
    constraints: dict[str, dict[str, Any]] = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "short", "schema": short}},
        "structured_outputs": {"choice": ["yes", "no"]},
    }
    for field, value in constraints.items():
        extra: dict[str, Any] = {"min_tokens": 40, "stop_token_ids": [0]}
        kwargs: dict[str, Any] = {"response_format": value} if field == "response_format" else {}
        if field == "structured_outputs":
            extra[field] = value
        got = client.chat.completions.create(
            model=model_id, messages=ask("Answer."), max_tokens=60, temperature=temperature, seed=3,
            logprobs=True, extra_body=extra, **kwargs,
        ).choices[0]  # fmt: skip
        assert got.finish_reason == "stop", (field, got)
        content = got.message.content or ""
        if field == "response_format":
            jsonschema.validate(json.loads(content), short)
        else:
            assert content in ("yes", "no")
        assert got.logprobs is not None and got.logprobs.content
        assert all(lp.logprob > -1e9 for lp in got.logprobs.content), got.logprobs


def test_an_answer_cut_by_max_tokens_says_length(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=model_id, messages=ask("Describe a person."), response_format=Person, max_tokens=3
        )


def test_json_object_streamed_and_seeded(client: openai.OpenAI, model_id: str) -> None:
    def run(stream: bool) -> str:
        kwargs: dict[str, Any] = dict(
            model=model_id,
            messages=ask("Give me a JSON object describing a cat."),
            response_format={"type": "json_object"},
            max_tokens=48,
            temperature=0.8,
            seed=5,
        )
        if not stream:
            c = client.chat.completions.create(**kwargs).choices[0]
            return (c.message.content or "") + "|" + str(c.finish_reason)
        parts, reason = [], None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
        return "".join(parts) + "|" + str(reason)

    plain, streamed = run(False), run(True)
    assert plain == streamed  # the same seed, the same constrained answer
    text, reason = plain.rsplit("|", 1)
    if reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_choice": ["positive", "negative"]}, lambda t: t in ("positive", "negative")),
        (
            {"guided_regex": r"[0-9]{3}-[0-9]{4}"},
            lambda t: len(t) == 8 and t[3] == "-" and t.replace("-", "").isdigit(),
        ),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
        ({"structured_outputs": {"regex": "[A-Z]{2}[0-9]"}}, lambda t: len(t) == 3 and t[:2].isupper()),
    ],
    ids=["guided_choice", "guided_regex", "structured_outputs.choice", "structured_outputs.regex"],
)
def test_vllm_extras_on_chat_and_completions(
    client: openai.OpenAI, model_id: str, extra: dict[str, Any], check: Any
) -> None:
    chat = client.chat.completions.create(
        model=model_id,
        messages=ask("Is this review good? 'Great food!'"),
        max_tokens=12,
        temperature=1.0,
        extra_body=extra,
    )
    completion = client.completions.create(
        model=model_id, prompt="Answer:", max_tokens=12, temperature=1.0, n=2, seed=1, extra_body=extra
    )
    texts = [chat.choices[0].message.content or ""] + [c.text for c in completion.choices]
    reasons = [chat.choices[0].finish_reason] + [c.finish_reason for c in completion.choices]
    assert reasons == ["stop"] * 3, texts
    assert all(check(t) for t in texts), texts


def test_logprobs_with_a_schema_are_finite(client: openai.OpenAI, model_id: str) -> None:
    completion = client.chat.completions.create(
        model=model_id,
        messages=ask("Pick one."),
        max_tokens=8,
        logprobs=True,
        top_logprobs=2,
        extra_body={"guided_choice": ["alpha", "beta"]},
    )
    content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
    answer = completion.choices[0].message.content
    assert answer in ("alpha", "beta")
    assert "".join(t.token for t in content).startswith(answer)  # then the stop token
    assert all(t.logprob > -1e9 and len(t.top_logprobs) == 2 for t in content)


# -- bad input -------------------------------------------------------------------------------------------


def _error(http: httpx.Client, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"response_format": _schema_format({"type": "colour"})},
            "response_format",
            'Unsupported type "colour"',
        ),
        (
            {"response_format": _schema_format({"type": "array", "uniqueItems": True})},
            "response_format",
            "'uniqueItems', which the grammar engine cannot enforce",
        ),
        ({"response_format": {"type": "xml"}}, "response_format", "unknown type 'xml'"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "invalid regex"),
        ({"guided_choice": []}, "guided_choice", "non-empty list"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "only one output constraint"),
        (
            {"tools": [{"type": "function", "function": {"parameters": {}}}]},
            "tools",
            "function.name is required",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "not": {}}},
                    }
                ]
            },
            "tools",
            "tools[0] (f) parameters",
        ),
        (
            {"tools": WEATHER_TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}},
            "tool_choice",
            "'fly', which is not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": WEATHER_TOOLS, "tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        (
            {"response_format": _schema_format({"type": "string", "pattern": "^(?=a)[a-z]+$"})},
            "response_format",
            "Lookahead is not supported",
        ),
    ],
)
def test_bad_constraints_are_400s_naming_the_parameter(
    http: httpx.Client, model_id: str, extra: dict[str, Any], param: str, words: str
) -> None:
    error = _error(http, {"model": model_id, "messages": ask("hi"), "max_tokens": 4, **extra})
    assert error["param"] == param
    assert words in error["message"], error["message"]


def test_bad_constraints_on_completions(http: httpx.Client, model_id: str) -> None:
    error = _error(
        http, {"model": model_id, "prompt": "x", "guided_json": {"type": "nope"}}, "/v1/completions"
    )
    assert error["param"] == "guided_json" and "nope" in error["message"]
