"""What the gateway measures about each HTTP request: TEI-style timing headers on the non-streamed
answers of /v1 endpoints (``x-total-time``, ``x-queue-time``, ``x-inference-time``, in whole
milliseconds), ``mmserve:requests_total`` by model, task and status for every /v1 response, and
``mmserve:http_request_duration_seconds`` by route."""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.disconnect import reported_status
from services.observability import request_context
from services.observability.metrics import count_request, http_labels, observe_duration
from services.observability.request_context import RequestContext
from services.observability.timing import ensure_context

V1 = "/v1/"
# Path prefix → the task label of a request (the most specific prefix first).
ROUTE_TASKS = (
    ("/v1/chat/", "chat"),
    ("/v1/completions", "chat"),
    ("/v1/embeddings", "embedding"),
    ("/v1/vision/", "vision"),
    ("/v1/audio/speech", "tts"),
    ("/v1/audio/", "asr"),
    ("/v1/collections", "retrieval"),
    ("/v1/retrieval/", "retrieval"),
    ("/v1/files", "files"),
    ("/v1/vector_stores", "vector_stores"),
    ("/v1/rag", "rag"),
    ("/v1/rerank", "rerank"),
    ("/v1/models", "models"),
)


def route_task(path: str) -> str:
    return next((task for prefix, task in ROUTE_TASKS if path.startswith(prefix)), "")


def _ms(seconds: float) -> bytes:
    return str(int(max(seconds, 0.0) * 1000)).encode()


def timing_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    """As TEI reports them. Parts of one request that ran side by side (``n`` > 1 choices) add up their
    times, so queue and inference are capped to keep ``queue + inference <= total``."""
    total = ctx.elapsed_s
    queue = min(ctx.queue_s, total)
    inference = min(ctx.inference_s, total - queue)
    return [
        (b"x-total-time", _ms(total)),
        (b"x-queue-time", _ms(queue)),
        (b"x-inference-time", _ms(inference)),
    ]


def _is_event_stream(message: Message) -> bool:
    headers: Any = message.get("headers", ())
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)


def http_metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Around every routed request (Litestar middleware runs after routing)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path: str = scope["path"]
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The context that is open now is the one the services recorded into, whichever
                # middleware opened it.
                ctx = request_context.current()
                if ctx is not None and path.startswith(V1) and status < 400 and not _is_event_stream(message):
                    message = {**message, "headers": [*message.get("headers", ()), *timing_headers(ctx)]}
            await send(message)

        with ensure_context(), http_labels() as labels:
            try:
                await app(scope, receive, send_with_headers)
            finally:
                if path.startswith(V1):
                    count_request(labels.model_name, route_task(path), reported_status(status))
                route = str(scope.get("path_template") or path)
                observe_duration(route, time.perf_counter() - started)

    return middleware


async def count_unrouted(message: Message, scope: Scope) -> None:
    """``before_send`` hook: /v1 requests that matched no route (404, 405) never reach middleware."""
    if message["type"] != "http.response.start" or "route_handler" in scope:
        return
    path = str(scope.get("path", ""))
    if path.startswith(V1):
        count_request("", route_task(path), message["status"])
