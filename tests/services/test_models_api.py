"""GET /v1/models/{model} of a real server: each served model as the list shows it, and OpenAI's 404 for
an unknown one (the openai SDK's ``client.models.retrieve``)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.helpers.api import error_of

EMBEDDING_MODEL = "all-minilm-l6-v2"  # models.toml


@pytest.fixture(scope="module")
def cards(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    return {card["id"]: card for card in response.json()["data"]}


def test_each_listed_model_is_retrieved_as_listed(
    http: httpx.Client, cards: dict[str, dict[str, Any]]
) -> None:
    assert EMBEDDING_MODEL in cards
    for model, card in cards.items():
        response = http.get(f"/v1/models/{model}")
        assert response.status_code == 200, response.text
        assert response.json() == card


def test_sdk_retrieves_a_model(client: openai.OpenAI, cards: dict[str, dict[str, Any]]) -> None:
    model = client.models.retrieve(EMBEDDING_MODEL)
    assert model.id == EMBEDDING_MODEL and model.object == "model"
    assert model.created == cards[EMBEDDING_MODEL]["created"]
    assert model.owned_by == cards[EMBEDDING_MODEL]["owned_by"]


@pytest.mark.parametrize("model", ["gpt-4o", "whisper-tiny", "all-minilm-l6-v2x"])
def test_unknown_model_is_404(http: httpx.Client, client: openai.OpenAI, model: str) -> None:
    error = error_of(http.get(f"/v1/models/{model}"), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model", error
    assert error["type"] == "invalid_request_error" and model in error["message"], error
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve(model)
    assert raised.value.code == "model_not_found"


def test_retrieval_is_in_the_schema(http: httpx.Client) -> None:
    paths = http.get("/schema/openapi.json").json()["paths"]
    operation = paths["/v1/models/{model}"]["get"]
    assert {"200", "404"} <= set(operation["responses"]), operation["responses"]
