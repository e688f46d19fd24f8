"""Dynamic micro-batching for one-shot encoders (embeddings, vision, the ASR encoder, TTS).

Callers on the event loop submit items; one background thread collects what arrives within
``max_wait_ms`` of the first waiting item, sorts it by length so that items of similar size share a
forward (less padding), cuts it into batches of at most ``max_batch_tokens`` padded tokens and
``max_batch_size`` items, runs them, and hands each caller its own rows back. Each finished batch is
described to the optional ``on_batch`` observer; each submission's queue and run time is reported to
the caller's open ``timing.measure()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared_engine.compute import CallerThread, Lane
from shared_engine.errors import InvalidRequest, Overloaded
from shared_engine.timing import report

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class MicroBatchConfig:
    max_batch_tokens: int = 16384
    max_batch_size: int = 128
    max_wait_ms: float = 2.0
    max_queued_items: int = 4096  # admission control: past this many waiting items, submissions get 429

    def __post_init__(self) -> None:
        if self.max_queued_items < 1:
            raise ValueError(f"max_queued_items must be >= 1, got {self.max_queued_items}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


@dataclass
class _Item(Generic[In]):
    value: In
    cost: int
    slot: int
    job: _Job


class _Job:
    """One caller's submission: its items' results are filled in as their batches finish."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Any]] = loop.create_future()
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.arrival = time.monotonic()
        self.started: float | None = None  # when the first batch holding one of its items began
        self.ended = self.arrival  # when the latest such batch ended

    def fill(self, slot: int, value: Any) -> None:
        self.results[slot] = value
        self.remaining -= 1
        if self.remaining == 0:
            self._settle(self.results, None)

    def fail(self, exc: BaseException) -> None:
        if self.remaining < 0:
            return
        self.remaining = -1
        self._settle(None, exc)

    def _settle(self, value: list[Any] | None, exc: BaseException | None) -> None:
        # RuntimeError: the caller's event loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, self.future, value, exc)


def _resolve(future: asyncio.Future[list[Any]], value: list[Any] | None, exc: BaseException | None) -> None:
    if future.done():  # the caller went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchStats:
    batches: int
    items: int
    last_batch_size: int
    last_batch_tokens: int
    queue_depth: int


@dataclass(frozen=True)
class BatchRun:
    """One batch that ran: its items, its padded size (items × longest), how long each item waited
    from its submission to the batch's start, and how long the batch ran (seconds)."""

    size: int
    padded_tokens: int
    queue_s: tuple[float, ...]
    run_s: float


BatchObserver = Callable[[BatchRun], None]


def pack(costs: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Indices of ``costs`` cut into batches, shortest first, each within ``size × longest <= max_tokens``
    (an item longer than the budget runs alone)."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = costs[i]  # sorted: the newcomer is the longest
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        cost: Callable[[In], int],
        config: MicroBatchConfig,
        name: str = "encoder",
        lane: Lane | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.on_batch = on_batch
        self.lane = lane or CallerThread()
        self.cost = cost
        self.config = config
        self._queue: queue.SimpleQueue[_Item[In] | None] = queue.SimpleQueue()
        self._batches = 0
        self._items = 0
        self._last = (0, 0)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-batcher", daemon=True)
        self._thread.start()

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Encode ``items`` (batched with whatever else is waiting); results in the same order."""
        if not items:
            return []
        if self._stopped.is_set():
            raise RuntimeError("the batcher has stopped")
        limit = self.config.max_queued_items
        if len(items) > limit:
            raise InvalidRequest(f"{len(items)} inputs in one request; this model queues at most {limit}")
        waiting = self._queue.qsize()
        if waiting + len(items) > limit:
            raise Overloaded(
                f"The server is busy: {waiting} inputs are waiting for this model "
                f"(max_queued_items={limit}). Retry later."
            )
        job = _Job(asyncio.get_running_loop(), len(items))
        for slot, value in enumerate(items):
            self._queue.put(_Item(value, max(1, self.cost(value)), slot, job))
        results = await job.future
        started = job.arrival if job.started is None else job.started
        report(started - job.arrival, job.ended - started)
        return results

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._items, self._last[0], self._last[1], self._queue.qsize())

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- batcher thread -----------------------------------------------------------------------------

    def _collect(self) -> list[_Item[In]]:
        first = self._queue.get()
        if first is None:
            return []
        pending = [first]
        tokens = first.cost
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(pending) < self.config.max_batch_size and tokens < self.config.max_batch_tokens:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopped.set()
                break
            pending.append(item)
            tokens += item.cost
        return [p for p in pending if not p.job.future.done()]  # skip callers that went away

    def _loop(self) -> None:
        while not self._stopped.is_set():
            pending = self._collect()
            batches = pack(
                [p.cost for p in pending], self.config.max_batch_tokens, self.config.max_batch_size
            )
            for batch in batches:
                self._run([pending[i] for i in batch])
        # Whatever is still queued will never run: tell its callers instead of leaving them waiting.
        stopped = RuntimeError("the batcher has stopped")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.job.fail(stopped)

    def _run(self, batch: list[_Item[In]]) -> None:
        start = time.monotonic()
        for p in batch:
            if p.job.started is None:
                p.job.started = start
        try:
            outputs = self.lane.run(self.run_batch, [p.value for p in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(outputs)} results")
        except Exception as exc:
            logger.exception("encoder batch of %d failed", len(batch))
            for job in {id(p.job): p.job for p in batch}.values():
                job.fail(exc)
            return
        end = time.monotonic()
        self._batches += 1
        self._items += len(batch)
        self._last = (len(batch), len(batch) * max(p.cost for p in batch))
        for item, out in zip(batch, outputs, strict=True):
            item.job.ended = end
            if item.job.remaining > 0:
                item.job.fill(item.slot, out)
        if self.on_batch is not None:
            queued = tuple(start - p.job.arrival for p in batch)
            try:
                self.on_batch(BatchRun(len(batch), self._last[1], queued, end - start))
            except Exception:
                logger.exception("batch observer failed")
