"""Error answers of a real ``services.commands.serve`` process: status, and the OpenAI error body
``{"error": {"message", "type", "param", "code"}}`` with ``param`` naming the culprit.

Requests that take the engine down are sent to a server of their own, never the shared one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.api import error_of

MAX_MODEL_LEN = 8192  # models.toml: [models.engine] max_model_len
VOCAB_SIZE = 49152  # SmolLM2's tokenizer


def chat_body(model: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    body.update(fields)
    return body


def completion_body(model: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": "hi", "max_tokens": 1}
    body.update(fields)
    return body


MISSING = object()


@dataclass(frozen=True)
class Case:
    endpoint: str  # "chat" or "completions"
    fields: dict[str, Any]  # merged into a valid body; MISSING removes the field
    param: str | None

    def body(self, model: str) -> dict[str, Any]:
        body = chat_body(model) if self.endpoint == "chat" else completion_body(model)
        for key, value in self.fields.items():
            if value is MISSING:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


BAD_REQUESTS: dict[str, Case] = {
    "chat-temperature-negative": Case("chat", {"temperature": -0.5}, "temperature"),
    "chat-temperature-string": Case("chat", {"temperature": "hot"}, "temperature"),
    "chat-top_p-zero": Case("chat", {"top_p": 0}, "top_p"),
    "chat-top_p-above-one": Case("chat", {"top_p": 1.5}, "top_p"),
    "chat-max_tokens-zero": Case("chat", {"max_tokens": 0}, "max_tokens"),
    "chat-max_tokens-negative": Case("chat", {"max_tokens": -3}, "max_tokens"),
    "chat-max_tokens-float": Case("chat", {"max_tokens": 2.5}, "max_tokens"),
    "chat-max_completion_tokens-zero": Case("chat", {"max_completion_tokens": 0}, "max_completion_tokens"),
    "chat-n-zero": Case("chat", {"n": 0}, "n"),
    "chat-n-string": Case("chat", {"n": "three"}, "n"),
    "chat-messages-missing": Case("chat", {"messages": MISSING}, "messages"),
    "chat-messages-empty": Case("chat", {"messages": []}, "messages"),
    "chat-messages-not-a-list": Case("chat", {"messages": "hi"}, "messages"),
    "chat-model-missing": Case("chat", {"model": MISSING}, "model"),
    "chat-top_logprobs-without-logprobs": Case("chat", {"top_logprobs": 2}, "top_logprobs"),
    "chat-top_logprobs-too-many": Case("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "chat-stop-empty-string": Case("chat", {"stop": ""}, "stop"),
    "chat-presence_penalty-above-2": Case("chat", {"presence_penalty": 2.5}, "presence_penalty"),
    "completions-frequency_penalty-below-minus-2": Case(
        "completions", {"frequency_penalty": -3}, "frequency_penalty"
    ),
    "chat-repetition_penalty-zero": Case("chat", {"repetition_penalty": 0}, "repetition_penalty"),
    "completions-min_p-above-one": Case("completions", {"min_p": 1.5}, "min_p"),
    "completions-min_tokens-negative": Case("completions", {"min_tokens": -1}, "min_tokens"),
    "chat-min_tokens-above-max_tokens": Case("chat", {"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    "chat-continue_final_message-with-generation-prompt": Case(
        "chat", {"continue_final_message": True}, "continue_final_message"
    ),
    "chat-chat_template_kwargs-reserved": Case(
        "chat", {"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"
    ),
    "chat-image-content-part": Case(
        "chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"
    ),
    "chat-text-part-without-text": Case(
        "chat", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"
    ),
    "completions-prompt-empty-list": Case("completions", {"prompt": []}, "prompt"),
    "completions-prompt-empty-string": Case("completions", {"prompt": ""}, "prompt"),
    "completions-prompt-missing": Case("completions", {"prompt": MISSING}, "prompt"),
    "completions-prompt-mixed-list": Case("completions", {"prompt": ["a", 1]}, "prompt"),
    "completions-token-id-too-large": Case("completions", {"prompt": [1, 2, VOCAB_SIZE]}, "prompt"),
    "completions-token-id-negative": Case("completions", {"prompt": [-1]}, "prompt"),
    "completions-token-id-list-out-of-vocab": Case("completions", {"prompt": [[1, 2], [3, 10**9]]}, "prompt"),
    "completions-temperature-negative": Case("completions", {"temperature": -1}, "temperature"),
    "completions-top_p-zero": Case("completions", {"top_p": 0.0}, "top_p"),
    "completions-max_tokens-zero": Case("completions", {"max_tokens": 0}, "max_tokens"),
    "completions-n-zero": Case("completions", {"n": 0}, "n"),
    "completions-logprobs-too-many": Case("completions", {"logprobs": 21}, "logprobs"),
    "completions-suffix": Case("completions", {"suffix": "the end"}, "suffix"),
    "chat-logit_bias-not-a-token-id": Case("chat", {"logit_bias": {"Paris": 5}}, "logit_bias"),
    "chat-logit_bias-past-the-vocabulary": Case("chat", {"logit_bias": {str(VOCAB_SIZE): 5}}, "logit_bias"),
    "completions-allowed_token_ids-past-the-vocabulary": Case(
        "completions", {"allowed_token_ids": [5, VOCAB_SIZE]}, "allowed_token_ids"
    ),
    "chat-stop_token_ids-past-the-vocabulary": Case(
        "chat", {"stop_token_ids": [VOCAB_SIZE + 10**6], "min_tokens": 1}, "stop_token_ids"
    ),
    "completions-min_tokens-with-the-prompt-alone": Case(
        "completions", {"max_tokens": 0, "echo": True, "min_tokens": 1}, "min_tokens"
    ),
    "completions-stop_token_ids-negative": Case("completions", {"stop_token_ids": [-1]}, "stop_token_ids"),
    "chat-allowed_token_ids-with-a-grammar": Case(
        "chat", {"allowed_token_ids": [5], "response_format": {"type": "json_object"}}, "allowed_token_ids"
    ),
    "chat-allowed_token_ids-empty": Case("chat", {"allowed_token_ids": []}, "allowed_token_ids"),
    "chat-bad_words-blank": Case("chat", {"bad_words": ["Paris", " "]}, "bad_words"),
    "completions-truncate_prompt_tokens-zero": Case(
        "completions", {"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"
    ),
    "completions-truncate_prompt_tokens-below-minus-one": Case(
        "completions", {"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"
    ),
    "chat-truncate_prompt_tokens-past-the-context": Case(
        "chat", {"truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens"
    ),
    "completions-logit_bias-above-100": Case("completions", {"logit_bias": {"30": 101}}, "logit_bias"),
    "completions-response_format-unknown": Case(
        "completions", {"response_format": {"type": "yaml"}}, "response_format"
    ),
    "chat-stream_options-without-stream": Case(
        "chat", {"stream_options": {"include_usage": True}}, "stream_options"
    ),
    "completions-more-sequences-than-one-request-may-hold": Case(
        "completions", {"prompt": ["hi"] * 100, "n": 2}, "n"
    ),
    "completions-stream_options-without-stream": Case(
        "completions", {"stream_options": {"include_usage": True}}, "stream_options"
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_request(http: httpx.Client, model_id: str, case: Case) -> None:
    error = error_of(http.post(case.path, json=case.body(model_id)), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == case.param
    assert error["code"] is None


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values())[:6], ids=list(BAD_REQUESTS)[:6])
def test_bad_request_when_streaming_is_json_not_sse(http: httpx.Client, model_id: str, case: Case) -> None:
    body = case.body(model_id)
    body["stream"] = True
    error = error_of(http.post(case.path, json=body), 400)
    assert error["param"] == case.param


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model(http: httpx.Client, model_id: str, path: str, stream: bool) -> None:
    body = chat_body("no-such-model") if "chat" in path else completion_body("no-such-model")
    body["stream"] = stream
    error = error_of(http.post(path, json=body), 404)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


def test_unknown_model_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json(http: httpx.Client, path: str) -> None:
    response = http.post(
        path, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/chat/completions", json=[1, 2]), 400)
    assert error["type"] == "invalid_request_error"


def test_empty_body_says_what_is_wrong(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/chat/completions", headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error"
    message = error["message"].lower()
    assert "body" in message or "json" in message, error


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    error = error_of(http.get("/v1/no-such-route"), 404)
    assert error["type"] == "not_found_error"
    error = error_of(http.get("/v1/chat/completions"), 405)
    assert error["type"] == "invalid_request_error"


def test_a_text_part_without_text_is_named_so(http: httpx.Client, model_id: str) -> None:
    body = chat_body(model_id, messages=[{"role": "user", "content": [{"type": "text"}]}])
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert error["message"] == "messages[0]: a content part of type 'text' needs text"


# -- context length -----------------------------------------------------------------------------------------


def test_chat_context_length_exceeded(http: httpx.Client, model_id: str) -> None:
    max_tokens = MAX_MODEL_LEN + 100
    error = error_of(http.post("/v1/chat/completions", json=chat_body(model_id, max_tokens=max_tokens)), 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert str(MAX_MODEL_LEN) in error["message"]
    assert str(max_tokens) in error["message"]


def test_chat_context_length_exceeded_when_streaming(http: httpx.Client, model_id: str) -> None:
    body = chat_body(model_id, max_tokens=MAX_MODEL_LEN, stream=True)
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"


def test_completions_context_length_exceeded(http: httpx.Client, model_id: str) -> None:
    prompt = [504] * 10  # ten token ids
    body = completion_body(model_id, prompt=prompt, max_tokens=MAX_MODEL_LEN - 5)
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    message = error["message"]
    for number in (MAX_MODEL_LEN, 10, MAX_MODEL_LEN - 5, MAX_MODEL_LEN + 5):
        assert str(number) in message, (number, message)


def test_prompt_that_fills_the_context_leaves_no_room(http: httpx.Client, model_id: str) -> None:
    # No max_tokens: the default is "what the context leaves", and a full prompt leaves nothing.
    body = completion_body(model_id, prompt=[504] * MAX_MODEL_LEN, max_tokens=None)
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert str(MAX_MODEL_LEN) in error["message"]


def test_completions_context_length_names_prompt(http: httpx.Client, model_id: str) -> None:
    body = completion_body(model_id, max_tokens=MAX_MODEL_LEN)
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "prompt"


def test_context_length_through_sdk(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_MODEL_LEN
        )
    assert raised.value.status_code == 400
    assert raised.value.code == "context_length_exceeded"
    assert str(MAX_MODEL_LEN) in raised.value.message


def test_bad_parameter_through_sdk(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], temperature=-1, max_tokens=1
        )
    assert raised.value.type == "invalid_request_error"
    assert raised.value.param == "temperature"


# -- the server survives ------------------------------------------------------------------------------------


def test_server_survives_client_disconnect_mid_stream(http: httpx.Client, model_id: str) -> None:
    body = chat_body(model_id, messages=[{"role": "user", "content": "Write a long story."}], max_tokens=32)
    body.update(stream=True, temperature=0)
    for _ in range(2):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # leaving the block closes the connection half-way through the stream
    after = http.post("/v1/chat/completions", json=chat_body(model_id, max_tokens=2, temperature=0))
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["finish_reason"] == "length"
    assert http.get("/ready").status_code == 200


# -- requests that once took the engine down ------------------------------------------------------------


def _still_serves(http: httpx.Client, model_id: str) -> None:
    assert http.get("/ready").status_code == 200, http.get("/ready").text
    after = http.post("/v1/completions", json=completion_body(model_id, temperature=0))
    assert after.status_code == 200, after.text


def test_out_of_range_seed_is_rejected_without_killing_the_engine(http: httpx.Client, model_id: str) -> None:
    body = completion_body(model_id, temperature=1.0, seed=2**64)
    response = http.post("/v1/completions", json=body)
    assert error_of(response, 400)["param"] == "seed"
    _still_serves(http, model_id)


def test_the_largest_seed_serves_every_choice(http: httpx.Client, model_id: str) -> None:
    body = completion_body(model_id, temperature=1.0, seed=2**64 - 1, n=2, max_tokens=2)
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert [c["index"] for c in response.json()["choices"]] == [0, 1]
    assert http.post("/v1/completions", json=body).json()["choices"] == response.json()["choices"]


def test_tiny_temperature_does_not_kill_the_engine(http: httpx.Client, model_id: str) -> None:
    body = completion_body(model_id, temperature=1e-60, max_tokens=2)
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text  # treated as greedy
    _still_serves(http, model_id)


HUGE = "hello " * 2_000_000


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/tokenize", {"prompt": HUGE}, 200),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": HUGE, "truncate": True}, 200),
        ("/v1/rerank", {"model": "smollm2-135m-rerank", "query": "hello", "documents": [HUGE]}, 200),
        ("/v1/rerank", {"model": "smollm2-135m-rerank", "query": HUGE, "documents": ["hi"]}, 400),  # no room
    ],
    ids=["tokenize", "embeddings", "rerank-document", "rerank-query"],
)
def test_a_huge_input_is_tokenized_without_stalling_other_requests(
    http: httpx.Client, path: str, body: dict[str, Any], status: int
) -> None:
    """12 MB of text takes seconds to tokenize: on a worker thread, while /health keeps answering."""
    done = threading.Event()
    answer: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=300) as c:
            answer.append(c.post(path, json=body).status_code)
        done.set()

    threading.Thread(target=send, daemon=True).start()
    slowest = 0.0
    while not done.wait(0.05):
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    assert answer == [status]
    assert slowest < 2.0, f"/health took {slowest:.1f} s while the input was tokenized"
