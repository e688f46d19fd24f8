"""Prometheus metrics and TEI-style timing headers of a real server (the session's: embedded, or with
MMSERVE_TEST_DISTRIBUTED=1 the gRPC topology, whose engine metrics are on each worker's own /metrics).

Each test reads the counters before and after its requests, so what it checks is what those requests
added: HTTP responses by model, task and status on the gateway; tokens, latencies and batches where the
engines run."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST

from tests.helpers.prometheus import Sample, present, scrape, total
from tests.helpers.server import ServerProcess
from tests.services.conftest import DISTRIBUTED

EMBED_MODEL = "all-minilm-l6-v2"
VISION_MODEL = "efficientnet-lite0"
TIMING_HEADERS = ("x-total-time", "x-queue-time", "x-inference-time")

Scrape = Callable[[str], list[Sample]]


@pytest.fixture(scope="module")
def engine_urls(server: ServerProcess) -> dict[str, list[str]]:
    """Where each task's engine metrics are: the gateway itself, or every worker of the task (the
    topology prints their metrics addresses at start)."""
    gateway = [f"{server.base_url}/metrics"]
    if not DISTRIBUTED:
        return {task: gateway for task in ("chat", "embedding", "vision")}
    found = re.search(r"^metrics: (\S+)$", server.stdout_tail(20_000), re.MULTILINE)
    assert found, f"the topology printed no metrics addresses:\n{server.stdout_tail()}"
    return {task: urls.split(",") for task, _, urls in (item.partition("=") for item in found[1].split(";"))}


@pytest.fixture(scope="module")
def engine_metrics(engine_urls: dict[str, list[str]], http: httpx.Client) -> Scrape:
    return lambda task: [s for url in engine_urls[task] for s in scrape(url, http)]


def gateway_metrics(http: httpx.Client) -> list[Sample]:
    return scrape("/metrics", http)


def requests_counted(http: httpx.Client, **labels: str) -> float:
    return total(gateway_metrics(http), "mmserve:requests_total", **labels)


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Name three colours."}]
    return {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}


def timing_of(response: httpx.Response) -> dict[str, int]:
    values = {name: response.headers.get(name, "") for name in TIMING_HEADERS}
    assert all(v.isdigit() for v in values.values()), response.headers
    return {name: int(v) for name, v in values.items()}


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_metrics_are_prometheus_text_outside_the_schema(http: httpx.Client) -> None:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST  # each parameter once
    assert "# TYPE mmserve:requests_total counter" in response.text
    schema = http.get("/schema/openapi.json").json()
    assert "/metrics" not in schema["paths"]


def test_engine_gauges_report_per_model(engine_metrics: Scrape, model_id: str) -> None:
    samples = engine_metrics("chat")
    for name in ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting"):
        assert present(samples, f"mmserve:{name}", model_name=model_id), name
    usage = [s.value for s in samples if s.name == "mmserve:kv_cache_usage_perc"]
    assert all(0.0 <= u <= 1.0 for u in usage), usage


def test_a_chat_completion_is_counted_and_timed(
    http: httpx.Client, engine_metrics: Scrape, model_id: str
) -> None:
    before, engine_before = gateway_metrics(http), engine_metrics("chat")
    response = http.post("/v1/chat/completions", json=chat_body(model_id))
    assert response.status_code == 200, response.text
    usage, (choice,) = response.json()["usage"], response.json()["choices"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    after, engine_after = gateway_metrics(http), engine_metrics("chat")

    def grew(samples: tuple[list[Sample], list[Sample]], name: str, **labels: str) -> float:
        return total(samples[1], name, **labels) - total(samples[0], name, **labels)

    http_counts = (before, after)
    assert grew(http_counts, "mmserve:requests_total", model_name=model_id, task="chat", status="200") == 1
    route = {"route": "/v1/chat/completions"}
    assert grew(http_counts, "mmserve:http_request_duration_seconds_count", **route) == 1
    engine = (engine_before, engine_after)
    model = {"model_name": model_id}
    assert grew(engine, "mmserve:generation_tokens_total", **model) == usage["completion_tokens"]
    assert grew(engine, "mmserve:prompt_tokens_total", **model) == usage["prompt_tokens"]
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "request_queue_time_seconds", "request_inference_time_seconds"):  # fmt: skip
        assert grew(engine, f"mmserve:{histogram}_count", **model) == 1, histogram
    assert (
        grew(engine, "mmserve:inter_token_latency_seconds_count", **model) == usage["completion_tokens"] - 1
    )
    reason = choice["finish_reason"]
    assert grew(engine, "mmserve:request_success_total", finished_reason=reason, **model) == 1
    # One prefill of the prompt's uncached tokens, then one token per step.
    scheduled = usage["prompt_tokens"] - cached + usage["completion_tokens"] - 1
    assert grew(engine, "mmserve:iteration_tokens_total_sum", **model) == scheduled
    assert grew(engine, "mmserve:prefix_cache_queries_total", **model) == usage["prompt_tokens"]
    assert grew(engine, "mmserve:prefix_cache_hits_total", **model) == cached


def test_a_stream_read_to_its_end_is_counted_as_answered(http: httpx.Client, model_id: str) -> None:
    """The server reports the end of a finished exchange as a disconnect: a client that read the whole
    stream (or a whole download) did not leave early, and is a 200, not a 499."""
    labels = {"model_name": model_id, "task": "chat"}
    before = {s: requests_counted(http, status=s, **labels) for s in ("200", "499")}
    with http.stream("POST", "/v1/chat/completions", json=chat_body(model_id, stream=True)) as response:
        assert response.status_code == 200
        assert response.read().rstrip().endswith(b"data: [DONE]")
    after = {s: requests_counted(http, status=s, **labels) for s in ("200", "499")}
    assert (after["200"] - before["200"], after["499"] - before["499"]) == (1, 0), (before, after)


def test_a_repeated_prompt_counts_prefix_cache_hits(
    http: httpx.Client, model_id: str, engine_metrics: Scrape
) -> None:
    """Distributed mode too: cache-aware routing sends the repeat to the replica that cached it."""
    body = chat_body(model_id, messages=[{"role": "user", "content": "Repeat: " + "alpha beta " * 40}])
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    before = total(engine_metrics("chat"), "mmserve:prefix_cache_hits_total", model_name=model_id)
    response = http.post("/v1/chat/completions", json=body)
    cached = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    after = total(engine_metrics("chat"), "mmserve:prefix_cache_hits_total", model_name=model_id)
    assert cached > 0 and after - before == cached


def test_errors_are_counted_by_status(http: httpx.Client, model_id: str) -> None:
    cases: list[tuple[str, dict[str, Any], str, str, int]] = [
        # the model was found, then a parameter refused
        ("/v1/chat/completions", chat_body(model_id, top_logprobs=2), model_id, "chat", 400),
        ("/v1/chat/completions", chat_body("no-such-model"), "", "chat", 404),
        ("/v1/chat/completions", {"model": model_id, "messages": "not a list"}, "", "chat", 400),
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": []}, EMBED_MODEL, "embedding", 400),
        ("/v1/no-such-route", {}, "", "", 404),
        ("/v1/vector_stores/vs_none/search", {"query": "x"}, "", "vector_stores", 404),
        ("/v1/files", {}, "", "files", 400),
    ]
    for path, body, model, task, status in cases:
        before = requests_counted(http, model_name=model, task=task, status=str(status))
        response = http.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        after = requests_counted(http, model_name=model, task=task, status=str(status))
        assert after - before == 1, (path, body)
        assert not any(name in response.headers for name in TIMING_HEADERS)


def test_embeddings_and_vision_requests_are_observed_as_encoder_batches(
    http: httpx.Client, engine_metrics: Scrape
) -> None:
    requests = [
        (
            "embedding",
            EMBED_MODEL,
            "/v1/embeddings",
            {"model": EMBED_MODEL, "input": ["one", "two", "three"]},
        ),
        ("vision", VISION_MODEL, "/v1/vision/classifications", {"model": VISION_MODEL, "image": png()}),
    ]
    for task, model, path, body in requests:
        labels = {"model_name": model, "task": task}
        before = engine_metrics(task)
        response = http.post(path, json=body)
        assert response.status_code == 200, response.text
        after = engine_metrics(task)
        items = 3 if task == "embedding" else 1
        batches = total(after, "mmserve:encoder_batch_size_count", **labels) - total(
            before, "mmserve:encoder_batch_size_count", **labels
        )
        batched = total(after, "mmserve:encoder_batch_size_sum", **labels) - total(
            before, "mmserve:encoder_batch_size_sum", **labels
        )
        queued = total(after, "mmserve:encoder_queue_time_seconds_count", **labels) - total(
            before, "mmserve:encoder_queue_time_seconds_count", **labels
        )
        assert batches >= 1 and batched == items and queued == items, task


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", None),
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": ["timing headers"]}),
        ("/v1/vision/classifications", {"model": VISION_MODEL, "image": None}),
    ],
    ids=["chat", "embeddings", "vision"],
)
def test_non_streamed_answers_carry_consistent_timing_headers(
    http: httpx.Client, model_id: str, path: str, body: dict[str, Any] | None
) -> None:
    if body is None:
        body = chat_body(model_id)
    elif "image" in body:
        body = {**body, "image": png()}
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    timing = timing_of(response)
    assert timing["x-queue-time"] + timing["x-inference-time"] <= timing["x-total-time"], timing
    if path == "/v1/chat/completions":
        assert timing["x-inference-time"] > 0, timing  # eight tokens take more than a millisecond


def test_streamed_answers_carry_no_timing_headers(http: httpx.Client, model_id: str) -> None:
    with http.stream("POST", "/v1/chat/completions", json=chat_body(model_id, stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert not any(name in response.headers for name in TIMING_HEADERS), response.headers
        assert b"[DONE]" in b"".join(response.iter_bytes())
