"""GET /v1/models/{model} of a real server: each served model as the list shows it, and OpenAI's 404 for
an unknown one (the openai SDK's ``client.models.retrieve``); ids with slashes, as Hugging Face names
models, on a server of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.api import error_of
from tests.helpers.model_configs import only_models
from tests.helpers.server import ServerProcess, running_server
from tests.services.conftest import READY_TIMEOUT_S, server_env

EMBEDDING_MODEL = "all-minilm-l6-v2"  # models.toml
SLASHED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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


@pytest.mark.parametrize("model", ["gpt-4o", "whisper-tiny", "all-minilm-l6-v2x", "org/all-minilm-l6-v2"])
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


def test_every_v1_operation_documents_the_errors_any_request_can_meet(http: httpx.Client) -> None:
    """A bad X-Request-Timeout (400), a missing key (401), a shutdown under way (503) and a deadline
    passed (504) can answer any /v1 request, and a body past the server's limit (413) any that reads
    one; HEAD /ready answers 503 as GET does."""
    paths = http.get("/schema/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert {"400", "401", "503", "504"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)
    assert "503" in paths["/ready"]["head"]["responses"]


def slashed_config(folder: Path) -> Path:
    """The embedding model of models.toml served under an id with a slash."""
    config = only_models(folder, EMBEDDING_MODEL)
    config.write_text(config.read_text().replace(f'name = "{EMBEDDING_MODEL}"', f'name = "{SLASHED_MODEL}"'))
    return config


@pytest.fixture(scope="module")
def slashed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("slashed-model")
    env = {
        **server_env(),
        "MMSERVE_DATA_DIR": str(folder / "data"),
        "MMSERVE_MODELS_CONFIG": str(slashed_config(folder)),
    }
    with running_server(env=env, timeout=READY_TIMEOUT_S) as proc:
        yield proc


def test_a_model_id_with_slashes_is_retrieved(slashed_server: ServerProcess) -> None:
    with httpx.Client(base_url=slashed_server.base_url, timeout=60) as http:
        listed = http.get("/v1/models").json()["data"]
        assert [card["id"] for card in listed] == [SLASHED_MODEL]
        response = http.get(f"/v1/models/{SLASHED_MODEL}")
        assert response.status_code == 200, response.text
        assert response.json() == listed[0]
        error = error_of(http.get("/v1/models/sentence-transformers/other"), 404)
        assert error["code"] == "model_not_found" and "`sentence-transformers/other`" in error["message"]
    sdk = openai.OpenAI(base_url=f"{slashed_server.base_url}/v1", api_key="unused", max_retries=0)
    try:
        assert sdk.models.retrieve(SLASHED_MODEL).id == SLASHED_MODEL  # sent as sentence-transformers%2F...
    finally:
        sdk.close()
