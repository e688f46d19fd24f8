"""Where forward passes run: one compute thread per process on the CPU, the caller's thread on CUDA.

torch's CPU kernels run in parallel on GNU OpenMP, which keeps a team of helper threads for every
thread that calls into it. Once a process holds more such threads than it has cores (an LLM engine
thread, an encoder's batcher thread, a model loader: each with its own team), libgomp stops letting
idle helpers spin and puts them to sleep after every parallel region. A decode step is hundreds of
small regions, and waking the helpers for each then costs more than the work: measured on 2 cores,
a 64-token chat completion took 35% longer once the same process had answered one embeddings
request. So on the CPU every model's forwards (engine steps, encoder batches, tensor preprocessing)
run on a single thread, the compute lane, whose one team uses every core; work from different models
takes turns, in arrival order, at forward granularity. On CUDA kernels are queued asynchronously and
models overlap on the device, so the lane runs work on the caller's thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class ComputeLane:
    """Runs callables on its own thread, one at a time, in the order they were submitted."""

    def __init__(self, name: str = "compute") -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the lane; blocks the calling thread until it returns (or raises)."""
        if threading.current_thread() is self._thread:  # a job that submits work runs it in place
            return fn(*args)
        return self._submit(fn, args).result()

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the lane, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self._submit(fn, args))

    def drain(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until the work submitted so far has run (work cancelled before it
        started is skipped); whether it has. Before the interpreter exits: a forward still running in this
        daemon thread then aborts the process ("terminate called without an active exception")."""
        if threading.current_thread() is self._thread:
            return False
        try:
            self._submit(lambda: None, ()).result(timeout_s)
        except TimeoutError:
            return False
        return True

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, which re-raises it
                future.set_exception(exc)


class CallerThread:
    """The lane's interface, running work where it is called (blocking) or in a worker thread."""

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


Lane = ComputeLane | CallerThread

_cpu_lane: ComputeLane | None = None
_lock = threading.Lock()


def drain_cpu_lane(timeout_s: float = 30.0) -> bool:
    """Let the CPU lane finish what it holds (see ``ComputeLane.drain``); True where there is none."""
    return _cpu_lane is None or _cpu_lane.drain(timeout_s)


def compute_lane(device: torch.device | str) -> Lane:
    """The process's CPU compute lane for work on the CPU; the caller's thread for an accelerator."""
    global _cpu_lane
    if torch.device(device).type != "cpu":
        return CallerThread()
    with _lock:
        if _cpu_lane is None:
            _cpu_lane = ComputeLane()
        return _cpu_lane
