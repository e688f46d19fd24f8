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
from collections.abc import AsyncIterator, Callable
from typing import Any

from shared_engine.compute import CallerThread, Lane
from shared_engine.errors import EngineDead
from shared_engine.llm_engine import EngineStats, LLMEngine
from shared_engine.outputs import RequestOutput, merge_outputs
from shared_engine.sampling_params import OutputKind, SamplingParams
from shared_engine.timing import report

logger = logging.getLogger(__name__)

StepObserver = Callable[[LLMEngine, list[RequestOutput], float], None]


class _Stream:
    """One request's outputs on their way from the engine thread to the awaiting coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, final_only: bool) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.final_only = final_only
        self.held: list[RequestOutput] = []  # engine thread only: a final-only request's increments

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(item, RequestOutput) and self.final_only:
            self.held.append(item)
            if not item.finished:
                return
            item, self.held = merge_outputs(self.held), []
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> RequestOutput:
        """The next output; increments that queued up while the caller was busy come as one."""
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        ready = [item]
        while not ready[-1].finished and not self.queue.empty():
            nxt = self.queue.get_nowait()
            if isinstance(nxt, BaseException):
                self.queue.put_nowait(nxt)  # delivered after what came before it
                break
            ready.append(nxt)
        return merge_outputs(ready)


class AsyncLLMEngine:
    def __init__(
        self, engine: LLMEngine, on_step: StepObserver | None = None, lane: Lane | None = None
    ) -> None:
        self.engine = engine
        self.on_step = on_step
        self.lane = lane or CallerThread()
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
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
        """Stream the request's outputs. Closing the iterator early (client gone) aborts the request.

        ``encoder_state`` is what an encoder-decoder model's cross-attention reads (see Request). The
        request arrives now: time until the engine thread takes it counts as queue time. Its timing is
        reported to the caller's open ``timing.measure()``, if any."""
        if self._error is not None or self._stopped.is_set():
            raise EngineDead("the LLM engine has stopped") from self._error
        if params.guided is not None:
            # Compiling a new grammar takes milliseconds to seconds: off both the event loop and the
            # engine thread (a bad grammar is refused here, before anything is queued).
            await asyncio.to_thread(self.engine.precompile, params)
        stream = _Stream(asyncio.get_running_loop(), params.output_kind == OutputKind.FINAL_ONLY)
        ready: asyncio.Future[None] = stream.loop.create_future()
        self._streams[request_id] = stream
        arrival = time.monotonic()
        self._commands.put(
            ("add", (request_id, prompt_token_ids, params, encoder_state, arrival, stream, ready))
        )
        finished = False
        try:
            await ready  # raises the engine's validation error, if any
            while True:
                item = await stream.get()
                finished = item.finished
                if item.metrics is not None:
                    report(item.metrics.queue_s, item.metrics.inference_s)
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
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
            request_id, prompt, params, encoder_state, arrival, stream, ready = payload
            try:
                self.engine.add_request(request_id, prompt, params, arrival, encoder_state)
            except Exception as exc:  # validation errors go back to the caller that sent them
                stream.loop.call_soon_threadsafe(_settle, ready, exc)
            else:
                stream.loop.call_soon_threadsafe(_settle, ready, None)
        elif kind == "abort":
            self.engine.abort_request(payload)

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
                if self.on_step is not None:
                    try:
                        self.on_step(self.engine, outputs, time.perf_counter() - start)
                    except Exception:
                        logger.exception("step observer failed")
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
        except BaseException as exc:
            logger.exception("LLM engine loop died")
            self._error = exc
            dead = EngineDead(f"the LLM engine stopped: {exc}")
            for stream in list(self._streams.values()):
                stream.put(dead)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
