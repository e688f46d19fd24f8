"""An asyncio front for the engine: many coroutines await their requests while one background thread
steps the engine.

The step runs in a thread, not on the event loop, because a forward pass holds the CPU for
milliseconds to seconds; torch releases the GIL inside its kernels, so the HTTP server keeps
accepting and streaming while the engine computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from shared_engine.compute import CallerThread, Lane
from shared_engine.errors import EngineDead
from shared_engine.llm_engine import EngineStats, LLMEngine
from shared_engine.outputs import RequestOutput, merge_outputs
from shared_engine.sampling_params import OutputKind, SamplingParams
from shared_engine.timing import report

logger = logging.getLogger(__name__)

StepObserver = Callable[[LLMEngine, list[RequestOutput], float | None], None]
"""Called on the engine thread after each step with its outputs and its seconds, and with ``None`` for
the seconds when requests ended outside a step (aborted: their last outputs, with their metrics)."""
# A group's outputs, each with its request's position in the group.
GroupOutputs = AsyncGenerator[tuple[int, RequestOutput], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the engine: ``encoder_state`` is what an encoder-decoder model's
    cross-attention reads (see Request)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    encoder_state: Any = None


class _GroupStream:
    """A group of requests' outputs on their way from the engine thread to the awaiting coroutine,
    each tagged with the request's position in the group."""

    def __init__(self, loop: asyncio.AbstractEventLoop, requests: Sequence[GenerationRequest]) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, RequestOutput] | BaseException] = asyncio.Queue()
        self.final_only = [r.params.output_kind == OutputKind.FINAL_ONLY for r in requests]
        # Engine thread only: a final-only request's increments until its last.
        self.held: list[list[RequestOutput]] = [[] for _ in requests]
        self.error: BaseException | None = None

    def put(self, index: int, item: RequestOutput) -> None:
        if self.final_only[index]:
            self.held[index].append(item)
            if not item.finished:
                return
            item, self.held[index] = merge_outputs(self.held[index]), []
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, item))

    def fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, error)

    async def get(self) -> list[tuple[int, RequestOutput]]:
        """The next outputs; increments of a request that queued up while the caller was busy come as
        one. An error is raised after the outputs that came before it."""
        if self.error is not None:
            raise self.error
        items = [await self.queue.get()]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        runs: dict[int, list[RequestOutput]] = {}
        for item in items:
            if isinstance(item, BaseException):
                self.error = item
                break
            runs.setdefault(item[0], []).append(item[1])
        if not runs and self.error is not None:
            raise self.error
        return [(index, merge_outputs(outs)) for index, outs in runs.items()]


class AsyncLLMEngine:
    def __init__(
        self, engine: LLMEngine, on_step: StepObserver | None = None, lane: Lane | None = None
    ) -> None:
        self.engine = engine
        self.on_step = on_step
        self.lane = lane or CallerThread()
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, tuple[_GroupStream, int]] = {}
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        encoder_state: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs (see ``generate_group``)."""
        request = GenerationRequest(request_id, prompt_token_ids, params, encoder_state)
        async with aclosing(self.generate_group([request])) as outputs:
            async for _, out in outputs:
                yield out

    async def generate_group(self, requests: Sequence[GenerationRequest]) -> GroupOutputs:
        """Stream several requests' outputs, each tagged with the request's position in ``requests``.
        Closing the iterator early (client gone) aborts the requests still running.

        The engine takes the whole group between two steps, so its requests are scheduled together
        whatever else arrives: the ``n`` choices of one completion are computed alike each time, and a
        seeded repeat draws the same tokens. If the engine refuses one request (a validation error,
        raised here) it takes none. The requests arrive now: time until the engine thread takes them
        counts as queue time. Their timing is reported to the caller's open ``timing.measure()``, if any."""
        if self._error is not None or self._stopped.is_set():
            raise EngineDead("the LLM engine has stopped") from self._error
        # Compiling a new grammar takes milliseconds to seconds: off both the event loop and the engine
        # thread (a bad grammar is refused here, before anything is queued); n choices share one.
        grammars = {r.params.guided: r.params for r in requests if r.params.guided is not None}
        for params in grammars.values():
            await asyncio.to_thread(self.engine.precompile, params)
        stream = _GroupStream(asyncio.get_running_loop(), requests)
        ready: asyncio.Future[None] = stream.loop.create_future()
        for index, request in enumerate(requests):
            self._streams[request.request_id] = (stream, index)
        self._commands.put(("add", (list(requests), time.monotonic(), stream, ready)))
        running = {r.request_id for r in requests}
        try:
            await ready  # raises the engine's validation error, if any
            while running:
                for index, out in await stream.get():
                    if out.finished:
                        running.discard(out.request_id)
                    if out.metrics is not None:
                        report(out.metrics.queue_s, out.metrics.inference_s)
                    yield index, out
        finally:
            for request in requests:
                self._streams.pop(request.request_id, None)
            for request_id in running:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout)

    # -- the loop (engine thread) ------------------------------------------------------------------------

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "add":
            requests, arrival, stream, ready = payload
            added: list[str] = []
            try:
                # A group is admitted as a whole against the queue it finds: its own members never
                # fill the queue against the rest of it.
                self.engine.check_admission(sum(len(r.prompt_token_ids) for r in requests), len(requests))
                for r in requests:
                    self.engine.add_request(
                        r.request_id, r.prompt_token_ids, r.params, arrival, r.encoder_state, admitted=True
                    )
                    added.append(r.request_id)
            except Exception as exc:  # validation errors go back to the caller that sent them
                for request_id in added:
                    self.engine.abort_request(request_id)
                stream.loop.call_soon_threadsafe(_settle, ready, exc)
            else:
                stream.loop.call_soon_threadsafe(_settle, ready, None)
        elif kind == "abort":
            aborted = self.engine.abort_request(payload)
            if aborted is not None:
                self._observe([aborted], None)

    def _observe(self, outputs: list[RequestOutput], step_s: float | None) -> None:
        if self.on_step is not None:
            try:
                self.on_step(self.engine, outputs, step_s)
            except Exception:
                logger.exception("step observer failed")

    def _drain(self, block: bool) -> None:
        try:
            kind, payload = self._commands.get(block=block)
        except queue.Empty:
            return
        self._handle(kind, payload)
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            self._handle(kind, payload)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._drain(block=not self.engine.has_unfinished_requests())
                if not self.engine.has_unfinished_requests():
                    continue
                start = time.perf_counter()
                outputs = self.lane.run(self.engine.step)
                # Observed before delivery: a client that has its last token sees it in the metrics.
                self._observe(outputs, time.perf_counter() - start)
                for out in outputs:
                    entry = self._streams.get(out.request_id)
                    if entry is not None:
                        entry[0].put(entry[1], out)
        except BaseException as exc:
            logger.exception("LLM engine loop died")
            self._error = exc
            dead = EngineDead(f"the LLM engine stopped: {exc}")
            for stream in {id(s): s for s, _ in list(self._streams.values())}.values():
                stream.fail(dead)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
