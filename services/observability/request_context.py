"""What the gateway knows about the request being served, wherever in its call tree the code runs.

A middleware opens a ``RequestContext`` per HTTP request; services add the queue and inference time
their engines report; logging stamps the request id on every line; the response carries both. The
object is shared, not copied: tasks spawned for the request (choices of ``n > 1``, say) inherit the
context variable and add to the same object.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0  # waiting for an engine step or an encoder batch, summed over the request's parts
    inference_s: float = 0.0  # in forwards, from the first scheduled step to the last output
    deadline: float | None = None  # time.monotonic() by which the request must be answered
    client_gone: bool = False  # the client disconnected before the answer was complete
    cut_status: int | None = None  # the error status of a deadline or shutdown that cut a sent answer short

    def add_timing(self, queue_s: float, inference_s: float) -> None:
        self.queue_s += max(queue_s, 0.0)
        self.inference_s += max(inference_s, 0.0)

    @property
    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started


_current: ContextVar[RequestContext | None] = ContextVar("mmserve_request", default=None)


def current() -> RequestContext | None:
    return _current.get()


def begin(request_id: str) -> Token[RequestContext | None]:
    return _current.set(RequestContext(request_id))


def end(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def record_timing(queue_s: float, inference_s: float) -> None:
    """Add an engine's timing for part of the current request (no-op outside a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.add_timing(queue_s, inference_s)
