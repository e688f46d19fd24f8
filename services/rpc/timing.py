"""A worker's queue and inference time for a unary call, back to the gateway in trailing metadata
(seconds, as decimal text), where it is added to the HTTP request's timing. Streamed chat outputs
carry theirs in the last message instead (llm.proto's RequestMetrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from services.observability import request_context
from services.observability.request_context import RequestContext

QUEUE_KEY = "x-queue-time"
INFERENCE_KEY = "x-inference-time"


def timing_metadata(ctx: RequestContext) -> tuple[tuple[str, str], ...]:
    return ((QUEUE_KEY, f"{ctx.queue_s:.6f}"), (INFERENCE_KEY, f"{ctx.inference_s:.6f}"))


def record_metadata(metadata: Iterable[tuple[str, Any]] | None) -> None:
    values = {str(k): v for k, v in (metadata or ())}
    try:
        queue_s = float(values.get(QUEUE_KEY, 0.0))
        inference_s = float(values.get(INFERENCE_KEY, 0.0))
    except (TypeError, ValueError):
        return  # a worker that does not report timing
    request_context.record_timing(queue_s, inference_s)


class _TimedStub:
    """A stub whose unary calls also record the timing the worker sends back."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, method: str) -> Callable[..., Any]:
        rpc = getattr(self._stub, method)

        async def call(request: Any, **kwargs: Any) -> Any:
            pending = rpc(request, **kwargs)
            response = await pending
            record_metadata(await pending.trailing_metadata())
            return response

        return call


def timed(stub_class: Callable[[grpc.aio.Channel], Any]) -> Callable[[grpc.aio.Channel], Any]:
    return lambda channel: _TimedStub(stub_class(channel))
