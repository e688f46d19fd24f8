"""Admission control through the API: with small queues in front of the models, a burst several times
what they admit is answered with 200s and 429s only (Retry-After, OpenAI's error shape, before any
byte of a stream), every admitted request completes, and the server serves normally afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import error_of
from tests.helpers.model_configs import only_models
from tests.helpers.server import ServerProcess, start_server
from tests.services.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

EMBEDDER = "all-minilm-l6-v2"
CHAT = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Say something."}],
    "max_tokens": 16,
    "ignore_eos": True,
    "temperature": 0,
}


def _small_queues(folder: Path) -> Path:
    """The default chat and embedding models with room for 2 running + 2 waiting chats and 16 waiting
    embedding inputs."""
    path = only_models(folder, DEFAULT_MODEL, EMBEDDER)
    text = path.read_text()
    for old, new in (
        ("max_num_seqs = 64", "max_num_seqs = 2"),
        ("max_waiting_requests = 64", "max_waiting_requests = 2"),
        ("max_batch_size = 128", "max_batch_size = 4\nmax_queued_items = 16"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = _small_queues(tmp_path_factory.mktemp("overload"))
    server = start_server(env={**server_env(), "MMSERVE_MODELS_CONFIG": str(config)}, timeout=READY_TIMEOUT_S)
    yield server
    server.stop(remove_logs=True)


async def _burst(base_url: str, path: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def _check_refusals(responses: list[httpx.Response], limit: str) -> list[httpx.Response]:
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 429}, [(r.status_code, r.text[:200]) for r in responses]
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "the burst was never refused: the queues are not bounded"
    for r in refused:
        error = error_of(r, 429)
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert limit in error["message"]
        assert int(r.headers["retry-after"]) >= 1
    return [r for r in responses if r.status_code == 200]


def test_a_chat_burst_gets_200s_and_429s_and_admitted_requests_finish(small: ServerProcess) -> None:
    responses = asyncio.run(_burst(small.base_url, "/v1/chat/completions", [CHAT] * 16))
    served = _check_refusals(responses, "max_waiting_requests=2")
    assert len(served) >= 2  # at least the queue's room; more once the first ones run
    assert all(r.json()["usage"]["completion_tokens"] == 16 for r in served)


def test_a_refused_stream_is_a_429_before_any_event(small: ServerProcess) -> None:
    bodies: list[dict[str, object]] = [{**CHAT, "stream": True}] * 16
    responses = asyncio.run(_burst(small.base_url, "/v1/chat/completions", bodies))
    served = _check_refusals(responses, "max_waiting_requests=2")
    assert all(r.headers["content-type"].startswith("text/event-stream") for r in served)
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in served)


def test_an_embeddings_burst_gets_200s_and_429s(small: ServerProcess) -> None:
    body = {"model": EMBEDDER, "input": [f"sentence number {i} of a burst" for i in range(8)]}
    served = _check_refusals(
        asyncio.run(_burst(small.base_url, "/v1/embeddings", [body] * 24)), "max_queued_items=16"
    )
    assert all(len(r.json()["data"]) == 8 for r in served)


def test_the_server_is_idle_and_serving_after_the_bursts(small: ServerProcess) -> None:
    with httpx.Client(base_url=small.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        metrics = http.get("/metrics").text
        assert f'mmserve:num_requests_waiting{{model_name="{DEFAULT_MODEL}"}} 0.0' in metrics
        assert f'mmserve:num_requests_running{{model_name="{DEFAULT_MODEL}"}} 0.0' in metrics
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
