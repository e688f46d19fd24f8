"""The compute lane: every CPU forward of the process on one thread, in submission order."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shared_engine.compute import CallerThread, ComputeLane, compute_lane
from shared_engine.micro_batcher import MicroBatchConfig, MicroBatcher


def test_jobs_from_many_threads_run_one_at_a_time_on_the_lane_thread() -> None:
    lane = ComputeLane("test-lane")
    running = 0
    overlap = 0
    seen: set[str] = set()
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = max(overlap, running)
        seen.add(threading.current_thread().name)
        time.sleep(0.005)
        with lock:
            running -= 1
        return i * i

    results: dict[int, int] = {}
    callers = [threading.Thread(target=lambda i=i: results.update({i: lane.run(job, i)})) for i in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert results == {i: i * i for i in range(8)}
    assert overlap == 1 and seen == {"test-lane"}


def test_errors_reach_the_caller_and_the_lane_keeps_working() -> None:
    lane = ComputeLane()

    def fail() -> None:
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        lane.run(fail)
    assert lane.run(lambda: 7) == 7


def test_a_job_that_submits_work_runs_it_in_place() -> None:
    lane = ComputeLane()
    assert lane.run(lambda: lane.run(lambda: threading.current_thread().name)) == "compute"


async def test_awaiting_the_lane_leaves_the_event_loop_free() -> None:
    lane = ComputeLane()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    assert await lane.run_async(lambda: time.sleep(0.1) or "done") == "done"
    ticker.cancel()
    assert ticks > 10


def test_cpu_work_shares_one_lane_and_accelerators_run_in_place() -> None:
    assert compute_lane("cpu") is compute_lane("cpu")
    assert isinstance(compute_lane("cpu"), ComputeLane)
    assert isinstance(compute_lane("cuda"), CallerThread)


async def test_a_batcher_runs_its_batches_on_the_lane() -> None:
    lane = ComputeLane("batch-lane")
    threads: list[str] = []

    def run_batch(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return [x + 1 for x in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run_batch, lambda _: 1, MicroBatchConfig(), lane=lane)
    try:
        assert await batcher.submit([1, 2, 3]) == [2, 3, 4]
    finally:
        batcher.shutdown()
    assert threads and set(threads) == {"batch-lane"}


def test_drain_waits_for_the_work_submitted_so_far() -> None:
    """Before exit: the forward under way and those queued behind it run; too long a wait says so."""
    lane = ComputeLane("drain-test")
    release = threading.Event()
    done: list[int] = []

    def job(i: int) -> None:
        release.wait(10)
        done.append(i)

    for i in range(3):
        threading.Thread(target=lane.run, args=(job, i), daemon=True).start()
    time.sleep(0.1)
    assert not lane.drain(0.2) and done == []  # held: the wait runs out
    release.set()
    assert lane.drain(10) and sorted(done) == [0, 1, 2]
    assert lane.run(lambda: lane.drain(1)) is False  # from its own thread it cannot wait for itself
