"""How long a caller's work waited for the engine and how long it ran, for the caller to read.

The micro-batcher (per submission) and the decoder engine (per finished request) report their
numbers to the ``Timing`` that the calling code opened with ``measure()``; with none open, reports go
nowhere. Work started from tasks spawned inside the ``with`` block reports to the same object.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Timing:
    queue_s: float = 0.0
    inference_s: float = 0.0

    def add(self, queue_s: float, inference_s: float) -> None:
        self.queue_s += max(queue_s, 0.0)
        self.inference_s += max(inference_s, 0.0)


_open: ContextVar[Timing | None] = ContextVar("engine_timing", default=None)


@contextmanager
def measure() -> Iterator[Timing]:
    """Sum the queue and inference time of the engine work done inside the block."""
    timing = Timing()
    token = _open.set(timing)
    try:
        yield timing
    finally:
        _open.reset(token)


def report(queue_s: float, inference_s: float) -> None:
    timing = _open.get()
    if timing is not None:
        timing.add(queue_s, inference_s)
