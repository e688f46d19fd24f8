"""One real ``python -m services.commands.serve`` process per test session, on a free loopback port, and the
clients that talk to it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers.server import ServerProcess, ServerStartError, start_server

READY_TIMEOUT_S = 180.0
# Generous: on a loaded 2-core machine a short generation can take tens of seconds.
REQUEST_TIMEOUT_S = 300.0
DEFAULT_MODEL = "smollm2-135m-instruct"


def server_env() -> dict[str, str]:
    """Extra environment for test servers. One intra-op thread unless the caller's environment says
    otherwise: on a small machine shared with other jobs, torch's default thread pool oversubscribes the
    cores and a 135M-parameter model slows down about thirtyfold (0.5 s vs 17 s for an 8-token answer)."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


# MMSERVE_TEST_DISTRIBUTED=1 runs the same API suites against the distributed topology: every model
# in a gRPC worker (two LLM replicas) behind the gateway (`make test-distributed`).
DISTRIBUTED = os.environ.get("MMSERVE_TEST_DISTRIBUTED") == "1"


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    if DISTRIBUTED:
        module, args = "services.commands.topology", ("--base-port", "0")
    else:
        module, args = "services.commands.serve", ()
    try:
        proc = start_server(module, env=server_env(), timeout=READY_TIMEOUT_S, args=args)
    except ServerStartError as exc:
        pytest.fail(f"{module} did not start:\n{exc}", pytrace=False)
    try:
        yield proc
    finally:
        died = proc.proc.poll() is not None
        report = proc.describe_failure("the server exited during the test session") if died else ""
        proc.stop(remove_logs=not died)
    if died:
        pytest.fail(report, pytrace=False)


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)) as client:
        yield client


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    # No retries: a retried 5xx or timeout would hide exactly what these tests look for.
    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    try:
        yield sdk
    finally:
        sdk.close()


@pytest.fixture(scope="session")
def model_id(http: httpx.Client) -> str:
    """The served chat model, as /v1/models names it."""
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    chat_ids = [card["id"] for card in response.json()["data"] if card.get("task") == "chat"]
    assert chat_ids, f"no chat model served: {response.text}"
    return DEFAULT_MODEL if DEFAULT_MODEL in chat_ids else chat_ids[0]
