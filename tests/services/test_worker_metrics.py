"""Metrics and timing in distributed mode: a chat worker and an embedding worker, each started with
``--metrics-port``, behind a gateway routed to them. The engines' metrics are on the workers' own
/metrics (the gateway counts the HTTP requests), and the workers' queue and inference time reaches the
gateway's timing headers: in the last streamed message for chat, in trailing metadata for embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from services.rpc import embedding_pb2, embedding_pb2_grpc
from services.rpc.timing import INFERENCE_KEY, QUEUE_KEY
from tests.helpers.model_configs import only_models
from tests.helpers.prometheus import present, scrape, total
from tests.helpers.server import ServerProcess, default_server_env, free_port, launch, start_server
from tests.services.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, server_env

EMBED_MODEL = "all-minilm-l6-v2"
CHAT = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Count from one to ten."}],
    "max_tokens": 6,
    "temperature": 0,
}


@dataclass
class Worker:
    process: ServerProcess
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass
class Topology:
    gateway: ServerProcess
    workers: dict[str, Worker]


def launch_worker(task: str, env: dict[str, str]) -> Worker:
    port, metrics_port = free_port(), free_port()
    args = ("--task", task, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port))
    return Worker(
        launch("services.commands.worker", {**default_server_env(port), **env}, port, args=args), metrics_port
    )


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    config: Path = only_models(tmp_path_factory.mktemp("worker-metrics"), DEFAULT_MODEL, EMBED_MODEL)
    env = {**server_env(), "MMSERVE_MODELS_CONFIG": str(config)}
    workers = {task: launch_worker(task, env) for task in ("chat", "embedding")}
    try:
        endpoints = ";".join(f"{task}={w.address}" for task, w in workers.items())
        gateway = start_server(env={**env, "MMSERVE_ENDPOINTS": endpoints}, timeout=READY_TIMEOUT_S)
    except BaseException:
        for w in workers.values():
            w.process.stop()
        raise
    yield Topology(gateway, workers)
    gateway.stop(remove_logs=True)
    for w in workers.values():
        w.process.stop(remove_logs=True)


@pytest.fixture(scope="module")
def http(topology: Topology) -> Iterator[httpx.Client]:
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)
    with httpx.Client(base_url=topology.gateway.base_url, timeout=timeout) as client:
        yield client


def timing_of(response: httpx.Response) -> tuple[int, int, int]:
    total_ms, queue_ms, inference_ms = (
        int(response.headers[name]) for name in ("x-total-time", "x-queue-time", "x-inference-time")
    )
    assert queue_ms + inference_ms <= total_ms, response.headers
    return total_ms, queue_ms, inference_ms


def test_workers_answered_a_warm_up_request_before_they_turned_ready(topology: Topology) -> None:
    """Run first in this module: no client request has reached the workers yet."""
    chat = scrape(topology.workers["chat"].metrics_url)
    assert total(chat, "mmserve:e2e_request_latency_seconds_count", model_name=DEFAULT_MODEL) == 1
    embedding = scrape(topology.workers["embedding"].metrics_url)
    assert total(embedding, "mmserve:encoder_batch_size_count", model_name=EMBED_MODEL) == 1


def test_the_chat_workers_metrics_count_the_gateways_request(topology: Topology, http: httpx.Client) -> None:
    worker = topology.workers["chat"].metrics_url
    model = {"model_name": DEFAULT_MODEL}
    before, gateway_before = scrape(worker), scrape("/metrics", http)
    assert present(before, "mmserve:kv_cache_usage_perc", **model)
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    completion_tokens = response.json()["usage"]["completion_tokens"]
    after, gateway_after = scrape(worker), scrape("/metrics", http)

    def grew(name: str) -> float:
        return total(after, name, **model) - total(before, name, **model)

    assert grew("mmserve:generation_tokens_total") == completion_tokens
    assert grew("mmserve:time_to_first_token_seconds_count") == 1
    assert grew("mmserve:e2e_request_latency_seconds_count") == 1
    labels = {**model, "task": "chat", "status": "200"}
    counted = total(gateway_after, "mmserve:requests_total", **labels)
    assert counted - total(gateway_before, "mmserve:requests_total", **labels) == 1
    # The engine runs in the worker: the gateway has no engine series of its own for the model.
    assert not present(gateway_after, "mmserve:kv_cache_usage_perc", **model)


def test_timing_headers_carry_the_workers_numbers(topology: Topology, http: httpx.Client) -> None:
    chat = http.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200, chat.text
    assert timing_of(chat)[2] > 0  # six tokens in the worker's engine take more than a millisecond
    texts = [f"sentence number {i} about the metrics a worker reports to its gateway" * 3 for i in range(32)]
    before = scrape(topology.workers["embedding"].metrics_url)
    embeddings = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": texts})
    assert embeddings.status_code == 200, embeddings.text
    assert timing_of(embeddings)[2] > 0  # 32 inputs of ~40 tokens: one forward of milliseconds
    after = scrape(topology.workers["embedding"].metrics_url)
    labels = {"model_name": EMBED_MODEL, "task": "embedding"}
    batched = total(after, "mmserve:encoder_batch_size_sum", **labels)
    assert batched - total(before, "mmserve:encoder_batch_size_sum", **labels) == len(texts)


def test_a_unary_call_returns_its_timing_in_trailing_metadata(topology: Topology) -> None:
    request = embedding_pb2.EmbedRequest(
        model=EMBED_MODEL, inputs=[embedding_pb2.TokenIds(ids=[101, 7592, 102])]
    )
    with grpc.insecure_channel(topology.workers["embedding"].address) as channel:
        response, call = embedding_pb2_grpc.EmbeddingStub(channel).Embed.with_call(request, timeout=60)
    assert len(response.vectors) == 1
    trailers = dict(call.trailing_metadata())
    queue_s, inference_s = float(trailers[QUEUE_KEY]), float(trailers[INFERENCE_KEY])
    assert queue_s >= 0 and 0 < inference_s < 60
