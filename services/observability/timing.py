"""The engines' queue and inference time, added to the request being served (see request_context)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

from services.observability import request_context
from services.observability.request_context import RequestContext
from shared_engine.outputs import RequestOutput
from shared_engine.timing import measure

T = TypeVar("T")


async def timed(work: Awaitable[T]) -> T:
    """Await engine work (micro-batches, decoder requests) and add its timing to the current request."""
    with measure() as timing:
        result = await work
    request_context.record_timing(timing.queue_s, timing.inference_s)
    return result


def record_output(out: RequestOutput) -> None:
    """A decoder request's timing, from its last output."""
    if out.metrics is not None:
        request_context.record_timing(out.metrics.queue_s, out.metrics.inference_s)


@contextmanager
def ensure_context(request_id: str | None = None) -> Iterator[RequestContext]:
    """The open request context, or a new one for the duration of the block when none is open (code
    that opens one per request, such as the request-id middleware, makes this a pass-through)."""
    ctx = request_context.current()
    if ctx is not None:
        yield ctx
        return
    token = request_context.begin(request_id or uuid.uuid4().hex)
    try:
        yield cast(RequestContext, request_context.current())
    finally:
        request_context.end(token)
