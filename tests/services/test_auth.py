"""API keys: /v1 needs one of the configured keys (OpenAI's 401s otherwise), /health and /ready stay
open, /metrics follows its setting, and the OpenAPI schema declares the bearer scheme."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from services.errors import Unauthorized
from services.gateway.auth import ApiKeys
from tests.helpers.model_configs import only_models
from tests.helpers.server import ServerProcess, start_server
from tests.services.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

KEYS = ("sk-first-0123", "sk-second-4567")
APP_ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = only_models(tmp_path_factory.mktemp("auth"), DEFAULT_MODEL)
    env = {
        **server_env(),
        "MMSERVE_MODELS_CONFIG": str(config),
        "MMSERVE_API_KEYS": ",".join(KEYS),
        "MMSERVE_METRICS_REQUIRE_KEY": "true",
        "MMSERVE_CORS_ORIGINS": APP_ORIGIN,
    }
    server = start_server(env=env, timeout=READY_TIMEOUT_S)
    yield server
    server.stop(remove_logs=True)


@pytest.fixture()
def http(protected: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=protected.base_url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def _error(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return dict(error)


def test_health_and_ready_need_no_key(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 200


def test_v1_without_a_key_is_401_missing_api_key(http: httpx.Client) -> None:
    for response in (
        http.get("/v1/models"),
        http.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": []}),
        http.post("/tokenize", json={"prompt": "secret"}),
        http.post("/tokenize/", json={"prompt": "secret"}),
        http.post("/detokenize", json={"tokens": [1]}),
    ):
        assert _error(response)["code"] == "missing_api_key"
    counted = http.post("/tokenize", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert counted.status_code == 200 and counted.json()["count"] > 0


def test_the_key_is_checked_before_the_request_s_headers(http: httpx.Client) -> None:
    """A caller without a key learns nothing about its request, not even that a header is wrong."""
    bad_timeout = {"X-Request-Timeout": "never"}
    assert _error(http.get("/v1/models", headers=bad_timeout))["code"] == "missing_api_key"
    keyed = http.get("/v1/models", headers={**bad_timeout, "Authorization": f"Bearer {KEYS[0]}"})
    assert keyed.status_code == 400 and keyed.json()["error"]["param"] == "X-Request-Timeout", keyed.text


@pytest.mark.parametrize(
    "authorization",
    ["Bearer sk-wrong", "Bearer", "Basic sk-first-0123", f"Bearer {KEYS[0]}x", "sk-first-0123"],
)
def test_a_wrong_key_is_401_invalid_api_key(http: httpx.Client, authorization: str) -> None:
    response = http.get("/v1/models", headers={"Authorization": authorization})
    assert _error(response)["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_works_with_the_openai_client(protected: ServerProcess, key: str) -> None:
    client = openai.OpenAI(base_url=f"{protected.base_url}/v1", api_key=key, timeout=REQUEST_TIMEOUT_S)
    assert DEFAULT_MODEL in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_the_openai_client_reports_a_wrong_key_as_authentication_error(protected: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{protected.base_url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        client.models.list()


def test_metrics_follow_their_setting(http: httpx.Client) -> None:
    assert _error(http.get("/metrics"))["code"] == "missing_api_key"
    assert http.get("/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200


def test_the_schema_stays_open_and_declares_bearer_auth(http: httpx.Client) -> None:
    schema = http.get("/schema/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "one of MMSERVE_API_KEYS",
    }
    # Per operation: the API's routes need a key, the probes do not (as the guard has it).
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    for path, operation in operations:
        expected = None if path in ("/health", "/ready") else [{"bearer": []}]
        assert operation.get("security") == expected, path
    assert "security" not in schema


def test_keys_are_checked_only_where_required() -> None:
    keys = ApiKeys(("k1",))
    assert keys.required_for("/v1/embeddings") and not keys.required_for("/metrics")
    assert not keys.required_for("/health") and not ApiKeys().required_for("/v1/models")
    keys.check("Bearer k1")
    keys.check("bearer k1")
    with pytest.raises(Unauthorized):
        keys.check("Bearer k2")
    with pytest.raises(ValueError, match="no spaces"):
        ApiKeys(("has space",))


def test_a_page_of_an_allowed_origin_may_call_the_api(http: httpx.Client) -> None:
    """CORS (MMSERVE_CORS_ORIGINS): the browser's preflight, which carries no key, is answered; then the
    request with its key, whose answer names the origin and lets the page read the request id."""
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    preflight = http.options("/v1/chat/completions", headers={"Origin": APP_ORIGIN, **ask})
    assert preflight.status_code in (200, 204), preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    models = http.get("/v1/models", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {KEYS[0]}"})
    assert models.status_code == 200
    assert models.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in models.headers["access-control-expose-headers"].lower()
    _error(http.get("/v1/models", headers={"Origin": APP_ORIGIN}))  # the key is still needed
    other = http.get(
        "/v1/models", headers={"Origin": "http://elsewhere.example", "Authorization": f"Bearer {KEYS[0]}"}
    )
    assert "access-control-allow-origin" not in other.headers
