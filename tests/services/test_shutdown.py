"""Graceful shutdown of a real server: SIGTERM while a stream runs turns /ready to 503 and refuses new
work, lets the stream finish, then exits cleanly with the document store closed and its index saved."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx

from tests.helpers.api import error_of
from tests.helpers.model_configs import only_models
from tests.helpers.server import start_server
from tests.services.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

EMBEDDER = "all-minilm-l6-v2"
TOKENS = 48


def test_sigterm_drains_then_exits_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        **server_env(),
        "MMSERVE_MODELS_CONFIG": str(only_models(tmp_path, DEFAULT_MODEL, EMBEDDER)),
        "MMSERVE_DATA_DIR": str(data),
        "MMSERVE_SHUTDOWN_GRACE_S": "60",
        "MMSERVE_LOG_LEVEL": "info",
    }
    server = start_server(env=env, timeout=READY_TIMEOUT_S)
    try:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as http:
            assert http.post("/v1/collections", json={"name": "notes"}).status_code == 201
            docs = {"documents": [{"id": "d1", "text": "The drain test wrote this document."}]}
            assert http.post("/v1/collections/notes/documents", json=docs).status_code == 200

            first_token = threading.Event()
            events: list[str] = []

            def stream() -> None:
                body = {
                    "model": DEFAULT_MODEL,
                    "messages": [{"role": "user", "content": "Tell me a story."}],
                    "max_tokens": TOKENS,
                    "ignore_eos": True,
                    "stream": True,
                }
                with (
                    httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as own,
                    own.stream("POST", "/v1/chat/completions", json=body) as response,
                ):
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            events.append(line[6:])
                            first_token.set()

            streaming = threading.Thread(target=stream)
            streaming.start()
            assert first_token.wait(60), "the stream never started"
            server.proc.send_signal(signal.SIGTERM)

            ready = http.get("/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            refused = error_of(http.get("/v1/models"), 503)
            assert "shutting down" in refused["message"]
            assert http.get("/health").status_code == 200  # alive while it drains

            streaming.join(REQUEST_TIMEOUT_S)
        code = server.proc.wait(60)
    finally:
        server.stop()
    assert code == 0, server.describe_failure("the drained server did not exit cleanly")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip(), "the in-flight stream lost its text"
    # The store was closed (SQLite removes its write-ahead log on a clean close) and the index saved.
    retrieval = data / "retrieval"
    assert not list(retrieval.rglob("*-wal")), sorted(p.name for p in retrieval.rglob("*"))
    assert list(retrieval.rglob("notes.faiss"))
    log = server.stderr_path.read_text()
    assert "draining: 1 request(s) in flight" in log and "Traceback" not in log


def test_a_second_signal_cuts_whats_running_with_errors_and_still_closes_cleanly(tmp_path: Path) -> None:
    """A second SIGTERM does not wait out the grace: a stream still running ends with an error event and
    [DONE], a request not yet answered gets a 503 in OpenAI's shape, and the store still closes cleanly."""
    data = tmp_path / "data"
    env = {
        **server_env(),
        "MMSERVE_MODELS_CONFIG": str(only_models(tmp_path, DEFAULT_MODEL)),
        "MMSERVE_DATA_DIR": str(data),
        "MMSERVE_SHUTDOWN_GRACE_S": "600",
        "MMSERVE_LOG_LEVEL": "info",
    }
    server = start_server(env=env, timeout=READY_TIMEOUT_S)
    long = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 4000, "ignore_eos": True}  # fmt: skip
    events: list[str] = []
    answers: list[httpx.Response] = []
    first_token = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as own,
            own.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first_token.set()

    def whole() -> None:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as own:
            answers.append(own.post("/v1/chat/completions", json=long))

    try:
        threads = [threading.Thread(target=stream), threading.Thread(target=whole)]
        for thread in threads:
            thread.start()
        assert first_token.wait(60), "the stream never started"
        server.proc.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as http:
            assert http.get("/ready").status_code == 503
        server.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        code = server.proc.wait(60)
    finally:
        server.stop()
    assert code == 0, server.describe_failure("the server did not exit cleanly")
    assert events[-1] == "[DONE]"
    cut = json.loads(events[-2])
    assert cut["error"]["code"] is None and "shut down" in cut["error"]["message"], cut
    (answer,) = answers
    assert answer.status_code == 503 and "shut down" in error_of(answer, 503)["message"]
    assert not list((data / "retrieval").rglob("*-wal"))
    log = server.stderr_path.read_text()
    assert "cutting 2 request(s) still in flight" in log and "Traceback" not in log
