"""Request deadlines on the shared server (embedded, or the gRPC topology under
MMSERVE_TEST_DISTRIBUTED=1): X-Request-Timeout cuts a long generation short with a 504 (or, once a
stream is under way, an error event), and the model is free again right after."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers.api import error_of
from tests.helpers.prometheus import scrape, total

LONG = {"messages": [{"role": "user", "content": "Count to ten thousand."}], "max_tokens": 4000,
        "ignore_eos": True, "temperature": 0}  # fmt: skip


def test_a_request_past_its_deadline_is_answered_504(http: httpx.Client, model_id: str) -> None:
    start = time.monotonic()
    response = http.post(
        "/v1/chat/completions", json={**LONG, "model": model_id}, headers={"X-Request-Timeout": "1.5"}
    )
    elapsed = time.monotonic() - start
    error = error_of(response, 504)
    assert error["code"] == "deadline_exceeded" and error["type"] == "timeout_error"
    assert "1.5 s" in error["message"]
    assert 1.4 < elapsed < 10, elapsed  # 4,000 tokens would take minutes here


def _chat_requests(http: httpx.Client, status: str) -> float:
    return total(scrape("/metrics", http), "mmserve:requests_total", task="chat", status=status)


def test_a_stream_past_its_deadline_ends_with_an_error_event(http: httpx.Client, model_id: str) -> None:
    body = {**LONG, "model": model_id, "stream": True}
    timed_out_before, ok_before = _chat_requests(http, "504"), _chat_requests(http, "200")
    events: list[str] = []
    deadline = {"X-Request-Timeout": "2"}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=deadline) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["code"] == "deadline_exceeded"
    assert any("choices" in json.loads(e) for e in events[:-2]), "no token arrived before the deadline"
    # Its 200 went out with the first token, but the request did not finish: counted (and logged) as a 504.
    wait = time.monotonic() + 10
    while _chat_requests(http, "504") == timed_out_before and time.monotonic() < wait:
        time.sleep(0.1)
    assert _chat_requests(http, "504") == timed_out_before + 1
    assert _chat_requests(http, "200") == ok_before


def test_the_model_serves_again_at_once_after_a_deadline(http: httpx.Client, model_id: str) -> None:
    long = {**LONG, "model": model_id}
    error_of(http.post("/v1/chat/completions", json=long, headers={"X-Request-Timeout": "1"}), 504)
    short = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    start = time.monotonic()
    assert http.post("/v1/chat/completions", json=short).status_code == 200
    # Had the 4,000-token request kept running it would share every step; alone, two tokens are quick.
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "1e9", ""])
def test_an_unusable_timeout_header_is_400(http: httpx.Client, model_id: str, value: str) -> None:
    short = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    response = http.post("/v1/chat/completions", json=short, headers={"X-Request-Timeout": value})
    error = error_of(response, 400)
    assert error["param"] == "X-Request-Timeout" and "3600" in error["message"]


def test_the_header_applies_to_every_v1_route(http: httpx.Client) -> None:
    error_of(http.get("/v1/models", headers={"X-Request-Timeout": "never"}), 400)
    assert http.get("/health", headers={"X-Request-Timeout": "never"}).status_code == 200
