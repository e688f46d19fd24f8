"""Request ids and structured logs, end to end: a gateway routed to one chat worker over gRPC, both
writing JSON lines; the id a client sends comes back in the response, is on the gateway's access-log
line, and on the worker's line for the call it made."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers.utils import logging as transformers_logging

from services.observability import request_context
from services.observability.log_config import JsonFormatter, RequestIdFilter, configure_logging
from tests.helpers.model_configs import only_models
from tests.helpers.server import ServerProcess, default_server_env, free_port, launch, start_server
from tests.services.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    config = only_models(tmp_path_factory.mktemp("request-log"), DEFAULT_MODEL)
    logs = {"MMSERVE_LOG_LEVEL": "info", "MMSERVE_LOG_FORMAT": "json", "MMSERVE_MODELS_CONFIG": str(config)}
    port = free_port()
    worker_env = {**default_server_env(port), **server_env(), **logs}
    worker = launch(
        "services.commands.worker",
        worker_env,
        port,
        args=("--task", "chat", "--host", "127.0.0.1", "--port", str(port)),
    )
    try:
        gateway = start_server(
            env={**server_env(), **logs, "MMSERVE_ENDPOINTS": f"chat=127.0.0.1:{port}"},
            timeout=READY_TIMEOUT_S,
        )
    except BaseException:
        worker.stop()
        raise
    yield gateway, worker
    gateway.stop(remove_logs=True)
    worker.stop(remove_logs=True)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _wait_for_line(path: Path, match: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        for entry in _json_lines(path):
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {match} in {path}:\n{path.read_text()[-3000:]}")
        time.sleep(0.1)


def test_the_callers_id_comes_back_and_is_on_both_processes_log_lines(
    topology: tuple[ServerProcess, ServerProcess],
) -> None:
    gateway, worker = topology
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "trace-42.a"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a"
    access = _wait_for_line(gateway.stderr_path, {"request_id": "trace-42.a", "logger": "mmserve.access"})
    assert access["path"] == "/v1/chat/completions" and access["status"] == 200
    assert access["method"] == "POST" and access["duration_ms"] > 0
    assert access["component"] == "gateway"
    rpc = _wait_for_line(worker.stderr_path, {"request_id": "trace-42.a", "logger": "mmserve.rpc"})
    assert rpc["rpc"] == "/mmserve.llm.LLM/Generate" and rpc["code"] == "OK"
    assert rpc["component"] == "chat-worker"


def test_an_id_is_made_when_none_or_an_unusable_one_is_sent(
    topology: tuple[ServerProcess, ServerProcess],
) -> None:
    gateway, _ = topology
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        made = http.get("/v1/models").headers["x-request-id"]
        replaced = http.get("/v1/models", headers={"X-Request-ID": "has spaces\tand tabs"}).headers[
            "x-request-id"
        ]
        again = http.get("/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made) and re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert len({made, replaced, again}) == 3
    _wait_for_line(gateway.stderr_path, {"request_id": made, "path": "/v1/models", "status": 200})


def test_errors_carry_the_id_and_are_logged_with_their_status(
    topology: tuple[ServerProcess, ServerProcess],
) -> None:
    gateway, worker = topology
    bad = {**CHAT, "temperature": -1}
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post("/v1/chat/completions", json=bad, headers={"X-Request-ID": "bad-1"})
    assert response.status_code == 400 and response.headers["x-request-id"] == "bad-1"
    _wait_for_line(gateway.stderr_path, {"request_id": "bad-1", "status": 400})
    # Every line either process wrote is a JSON object.
    for path in (gateway.stderr_path, worker.stderr_path):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert lines and all(line.startswith("{") for line in lines), path.read_text()[-2000:]


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)]
)
def test_a_request_no_route_matches_carries_its_id_and_is_logged(
    topology: tuple[ServerProcess, ServerProcess], method: str, path: str, status: int
) -> None:
    gateway, _ = topology
    request_id = f"unrouted-{status}"
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.request(method, path, headers={"X-Request-ID": request_id})
    assert response.status_code == status and response.headers["x-request-id"] == request_id
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    access = _wait_for_line(gateway.stderr_path, {"request_id": request_id, "logger": "mmserve.access"})
    assert (access["method"], access["path"], access["status"]) == (method, path, status)


def test_the_json_formatter_stamps_the_current_request() -> None:
    record = logging.makeLogRecord({"name": "x", "levelno": logging.INFO, "levelname": "INFO", "msg": "m %d"})
    record.args = (5,)
    record.status = 201
    token = request_context.begin("req-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_context.end(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "req-7" and entry["message"] == "m 5" and entry["status"] == 201
    assert entry["level"] == "info" and entry["ts"].endswith("Z")


def test_json_logs_leave_out_loading_bars() -> None:
    """transformers draws "Loading weights" bars on stderr: terminal text, not JSON lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, transformers_logging.is_progress_bar_enabled())
    try:
        configure_logging("info", "json")
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        if saved[2]:
            transformers_logging.enable_progress_bar()
