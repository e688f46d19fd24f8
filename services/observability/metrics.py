"""Prometheus metrics: the decoder engines, the encoders' micro-batches, and HTTP requests.

Names follow vLLM's, with the prefix ``mmserve:``; engine metrics carry ``model_name``, encoder
metrics ``model_name`` and ``task``. Every metric lives in prometheus_client's default registry, created
once when this module is imported, so several apps or services in one process share them (each series
told apart by its labels). The gateway serves them at ``GET /metrics``, a worker on ``--metrics-port``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from shared_engine.llm_engine import LLMEngine
from shared_engine.micro_batcher import BatchRun
from shared_engine.outputs import RequestMetrics, RequestOutput

logger = logging.getLogger(__name__)

disable_created_metrics()  # no `*_created` series next to every counter and histogram

P = "mmserve:"
MODEL = ("model_name",)
ENCODER = ("model_name", "task")

# vLLM's buckets, with finer steps below 100 ms where small models on a CPU answer.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                   20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ENCODER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

NUM_RUNNING = Gauge(P + "num_requests_running", "Requests in the engine's running batch", MODEL)
NUM_WAITING = Gauge(P + "num_requests_waiting", "Requests waiting to be scheduled", MODEL)
KV_USAGE = Gauge(P + "kv_cache_usage_perc", "KV-cache usage (1 = every block in use)", MODEL)
PROMPT_TOKENS = Counter(P + "prompt_tokens", "Prompt tokens of finished requests", MODEL)
GENERATION_TOKENS = Counter(P + "generation_tokens", "Generated tokens", MODEL)
PREEMPTIONS = Counter(P + "num_preemptions", "Requests preempted for lack of KV blocks", MODEL)
PREFIX_QUERIES = Counter(P + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache", MODEL)
PREFIX_HITS = Counter(P + "prefix_cache_hits", "Prompt tokens found in the prefix cache", MODEL)
# No speculative decoding yet: declared so that dashboards and alerts can rely on them; they stay 0.
SPEC_DRAFT = Counter(P + "spec_decode_num_draft_tokens", "Draft tokens proposed", MODEL)
SPEC_ACCEPTED = Counter(P + "spec_decode_num_accepted_tokens", "Draft tokens accepted", MODEL)
SPEC_DRAFTS = Counter(
    P + "spec_decode_num_drafts", "Decode steps of a request that carried draft tokens", MODEL
)
REQUEST_SUCCESS = Counter(
    P + "request_success", "Finished requests by finish reason", (*MODEL, "finished_reason")
)
TTFT = Histogram(P + "time_to_first_token_seconds", "Time to first token", MODEL, buckets=TTFT_BUCKETS)
ITL = Histogram(P + "inter_token_latency_seconds", "Time between outputs", MODEL, buckets=TOKEN_BUCKETS)
TPOT = Histogram(
    P + "request_time_per_output_token_seconds", "(E2E - TTFT) / (tokens - 1)", MODEL, buckets=TOKEN_BUCKETS
)
E2E = Histogram(P + "e2e_request_latency_seconds", "Arrival to finish", MODEL, buckets=REQUEST_BUCKETS)
QUEUE = Histogram(
    P + "request_queue_time_seconds", "Arrival to first scheduled", MODEL, buckets=REQUEST_BUCKETS
)
INFERENCE = Histogram(
    P + "request_inference_time_seconds", "First scheduled to finish", MODEL, buckets=REQUEST_BUCKETS
)
ITERATION_TOKENS = Histogram(
    P + "iteration_tokens_total", "Tokens scheduled per engine step", MODEL, buckets=TOKENS_BUCKETS
)
BATCH_SIZE = Histogram(P + "batch_size", "Sequences scheduled per engine step", MODEL, buckets=SIZE_BUCKETS)

ENCODER_BATCH = Histogram(
    P + "encoder_batch_size", "Items per encoder micro-batch", ENCODER, buckets=SIZE_BUCKETS
)
ENCODER_TOKENS = Histogram(
    P + "encoder_batch_padded_tokens",
    "Padded tokens per encoder micro-batch",
    ENCODER,
    buckets=TOKENS_BUCKETS,
)
ENCODER_QUEUE = Histogram(
    P + "encoder_queue_time_seconds", "Submission to batch start, per item", ENCODER, buckets=ENCODER_BUCKETS
)
ENCODER_RUN = Histogram(
    P + "encoder_batch_seconds", "Run time of an encoder micro-batch", ENCODER, buckets=ENCODER_BUCKETS
)

HTTP_REQUESTS = Counter(
    P + "requests", "HTTP responses of /v1 endpoints by status code", ("model_name", "task", "status")
)
HTTP_DURATION = Histogram(
    P + "http_request_duration_seconds", "HTTP request to the end of its response", ("route",),
    buckets=REQUEST_BUCKETS,
)  # fmt: skip


class EngineMetrics:
    """``on_step`` observer of one model's decoder engine (runs on the engine thread)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._seen = (0, 0, 0, 0, 0, 0)  # prefix queries/hits, preemptions, drafts/guesses/accepted: so far
        self._engine: LLMEngine | None = None
        for metric in (NUM_RUNNING, NUM_WAITING, KV_USAGE, PROMPT_TOKENS, GENERATION_TOKENS, PREEMPTIONS,
                       PREFIX_QUERIES, PREFIX_HITS, SPEC_DRAFTS, SPEC_DRAFT, SPEC_ACCEPTED):  # fmt: skip
            metric.labels(model_name)  # every series exists (at 0) before the first request

    def __call__(self, engine: LLMEngine, outputs: list[RequestOutput], step_s: float | None) -> None:
        model = self.model_name
        if self._engine is not engine:
            # Read at scrape time, not per step: an abort frees blocks without a step to report it.
            self._engine = engine
            NUM_RUNNING.labels(model).set_function(lambda: engine.stats().num_running)
            NUM_WAITING.labels(model).set_function(lambda: engine.stats().num_waiting)
            KV_USAGE.labels(model).set_function(lambda: engine.stats().kv_cache_usage)
        if step_s is not None:
            self._step(engine)
        generated = sum(len(out.token_ids) for out in outputs)
        if generated:
            GENERATION_TOKENS.labels(model).inc(generated)
        for out in outputs:
            if out.itl_s is not None:
                ITL.labels(model).observe(out.itl_s)
            if out.metrics is not None:  # finished (aborted ones too: their first token came)
                self._finished(out, out.metrics)

    def _step(self, engine: LLMEngine) -> None:
        model = self.model_name
        stats = engine.stats()
        ITERATION_TOKENS.labels(model).observe(stats.last_batch_tokens)
        BATCH_SIZE.labels(model).observe(stats.last_batch_size)
        now = (
            stats.prefix_cache_queries,
            stats.prefix_cache_hits,
            stats.num_preemptions,
            stats.spec_num_drafts,
            stats.spec_num_draft_tokens,
            stats.spec_num_accepted_tokens,
        )
        counters = (PREFIX_QUERIES, PREFIX_HITS, PREEMPTIONS, SPEC_DRAFTS, SPEC_DRAFT, SPEC_ACCEPTED)
        for counter, before, after in zip(counters, self._seen, now, strict=True):
            if after > before:
                counter.labels(model).inc(after - before)
        self._seen = now

    def _finished(self, out: RequestOutput, m: RequestMetrics) -> None:
        model = self.model_name
        PROMPT_TOKENS.labels(model).inc(m.num_prompt_tokens)
        if m.ttft_s is not None:
            TTFT.labels(model).observe(m.ttft_s)
        if m.tpot_s is not None:
            TPOT.labels(model).observe(m.tpot_s)
        E2E.labels(model).observe(m.e2e_s)
        QUEUE.labels(model).observe(m.queue_s)
        INFERENCE.labels(model).observe(m.inference_s)
        reason = out.finish_reason.value if out.finish_reason is not None else ""
        REQUEST_SUCCESS.labels(model, reason).inc()


class EncoderMetrics:
    """``on_batch`` observer of one model's micro-batcher (runs on the batcher thread)."""

    def __init__(self, model_name: str, task: str) -> None:
        self.labels = (model_name, task)

    def __call__(self, run: BatchRun) -> None:
        ENCODER_BATCH.labels(*self.labels).observe(run.size)
        ENCODER_TOKENS.labels(*self.labels).observe(run.padded_tokens)
        ENCODER_RUN.labels(*self.labels).observe(run.run_s)
        queue = ENCODER_QUEUE.labels(*self.labels)
        for seconds in run.queue_s:
            queue.observe(seconds)


@dataclass
class HttpLabels:
    """What the gateway learns about an HTTP request while serving it: the model that answered."""

    model_name: str = ""


_http_labels: ContextVar[HttpLabels | None] = ContextVar("mmserve_http_labels", default=None)


@contextmanager
def http_labels() -> Iterator[HttpLabels]:
    labels = HttpLabels()
    token = _http_labels.set(labels)
    try:
        yield labels
    finally:
        _http_labels.reset(token)


def note_model(name: str) -> None:
    """The request being served is answered by model ``name`` (a no-op outside an HTTP request)."""
    labels = _http_labels.get()
    if labels is not None and not labels.model_name:
        labels.model_name = name


def count_request(model_name: str, task: str, status: int) -> None:
    HTTP_REQUESTS.labels(model_name, task, str(status)).inc()


def observe_duration(route: str, seconds: float) -> None:
    HTTP_DURATION.labels(route).observe(seconds)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics (Prometheus text) from a background thread, as a worker does."""
    start_http_server(port, addr=host)
    logger.info("metrics on http://%s:%d/metrics", host, port)
