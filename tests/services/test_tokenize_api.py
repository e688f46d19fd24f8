"""POST /tokenize and /detokenize (vLLM's routes): a text's or a conversation's tokens, exactly what a
completion or chat completion of the same input is charged for; ids back to text."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.helpers.api import error_of

QUESTION = [{"role": "user", "content": "Name the capital of France."}]
EMBEDDING_MODEL = "all-minilm-l6-v2"
VISION_MODEL = "efficientnet-lite0"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tokenize(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_prompt_counts_what_a_completion_is_charged(
    http: httpx.Client, client: openai.OpenAI, model_id: str
) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. 東京 😀"
    got = tokenize(http, model=model_id, prompt=prompt, return_token_strs=True)
    completion = client.completions.create(model=model_id, prompt=prompt, max_tokens=1)
    assert completion.usage is not None and got["count"] == completion.usage.prompt_tokens == len(
        got["tokens"]
    )
    assert got["max_model_len"] == http.get(f"/v1/models/{model_id}").json()["max_model_len"]
    assert len(got["token_strs"]) == got["count"] and got["token_strs"][1] == "Ġquick", got["token_strs"]
    back = http.post("/detokenize", json={"model": model_id, "tokens": got["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": prompt}


@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "none"}],
    ids=["plain", "with-tools", "tools-not-to-call"],
)
def test_messages_count_what_a_chat_completion_is_charged(
    http: httpx.Client, client: openai.OpenAI, model_id: str, extra: dict[str, Any]
) -> None:
    got = tokenize(http, model=model_id, messages=QUESTION, **extra)
    answer = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=1, **extra)  # type: ignore[arg-type]
    assert answer.usage is not None and got["count"] == answer.usage.prompt_tokens
    assert "token_strs" not in got


def test_template_options_shape_the_count(http: httpx.Client, model_id: str) -> None:
    opened = tokenize(http, model=model_id, messages=QUESTION)["tokens"]
    closed = tokenize(http, model=model_id, messages=QUESTION, add_generation_prompt=False)["tokens"]
    assert opened[: len(closed)] == closed and len(opened) > len(closed)
    prefilled = [*QUESTION, {"role": "assistant", "content": "The capital"}]
    continued = tokenize(
        http, model=model_id, messages=prefilled, add_generation_prompt=False, continue_final_message=True
    )["tokens"]
    assert continued[: len(opened)] == opened
    text = http.post("/detokenize", json={"tokens": continued}).json()["prompt"]
    assert text.endswith("assistant\nThe capital")


def test_a_developer_message_is_the_system_prompt(http: httpx.Client, model_id: str) -> None:
    """OpenAI's newer name for the system role: the template's default system prompt gives way to it, as
    to a system message, instead of a turn of a role the model never saw."""
    instructions = {"content": "Answer in one word.", "role": "system"}
    system = tokenize(http, model=model_id, messages=[instructions, *QUESTION])["tokens"]
    developer = tokenize(http, model=model_id, messages=[{**instructions, "role": "developer"}, *QUESTION])
    assert developer["tokens"] == system


def test_an_embedding_model_counts_what_an_embedding_is_charged(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    """As vLLM serves /tokenize for any model it loads: a text's word pieces with [CLS] and [SEP]; all of
    them past the model's window (the count is how a caller learns it must cut the text)."""
    text = "Tokenizers split unfamiliar words into pieces."
    got = tokenize(http, model=EMBEDDING_MODEL, prompt=text, return_token_strs=True)
    embedded = client.embeddings.create(model=EMBEDDING_MODEL, input=text)
    assert got["count"] == embedded.usage.prompt_tokens == len(got["tokens"])
    assert got["token_strs"][0] == "[CLS]" and got["token_strs"][-1] == "[SEP]", got["token_strs"]
    assert any(piece.startswith("##") for piece in got["token_strs"]), got["token_strs"]
    window = http.get(f"/v1/models/{EMBEDDING_MODEL}").json()["max_model_len"]
    assert got["max_model_len"] == window
    bare = tokenize(http, model=EMBEDDING_MODEL, prompt=text, add_special_tokens=False)
    assert bare["tokens"] == got["tokens"][1:-1]
    back = http.post("/detokenize", json={"model": EMBEDDING_MODEL, "tokens": bare["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text.lower()}, back.text
    long = tokenize(http, model=EMBEDDING_MODEL, prompt="word " * (2 * window))
    assert long["count"] == 2 * window + 2


def test_the_model_may_be_left_out(http: httpx.Client, model_id: str) -> None:
    assert tokenize(http, prompt="hi") == tokenize(http, model=model_id, prompt="hi")


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {}, 400, "prompt"),
        ("/tokenize", {"prompt": "hi", "messages": QUESTION}, 400, "messages"),
        ("/tokenize", {"messages": []}, 400, "messages"),
        ("/tokenize", {"prompt": "hi", "model": "no-such-model"}, 404, "model"),
        ("/tokenize", {"prompt": "hi", "model": VISION_MODEL}, 404, "model"),
        ("/tokenize", {"messages": QUESTION, "model": EMBEDDING_MODEL}, 400, "messages"),
        ("/detokenize", {"tokens": [1], "model": VISION_MODEL}, 404, "model"),
        ("/detokenize", {"tokens": [10**6], "model": EMBEDDING_MODEL}, 400, "tokens"),
        ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {}, 400, "tokens"),
    ],
)
def test_bad_requests(http: httpx.Client, path: str, body: dict[str, Any], status: int, param: str) -> None:
    assert error_of(http.post(path, json=body), status)["param"] == param
