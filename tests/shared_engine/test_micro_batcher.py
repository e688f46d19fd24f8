"""The micro-batcher: ``pack``'s cut of a queue into batches, and ``MicroBatcher`` with fake encoders that
record every batch they are handed (no model)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from shared_engine.errors import InvalidRequest, Overloaded
from shared_engine.micro_batcher import MicroBatchConfig, MicroBatcher, pack

WAIT_S = 5.0  # upper bound on anything that should take milliseconds

MakeBatcher = Callable[..., MicroBatcher[int, int]]


# -- pack -------------------------------------------------------------------------------------------------


def check_pack(costs: list[int], max_tokens: int, max_size: int) -> list[list[int]]:
    batches = pack(costs, max_tokens, max_size)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(costs))), "every index exactly once"
    assert [costs[i] for i in flat] == sorted(costs), "shortest first, across and within batches"
    for batch in batches:
        assert batch, "no empty batch"
        assert len(batch) <= max_size
        longest = max(costs[i] for i in batch)
        if longest > max_tokens:
            assert len(batch) == 1, f"an item over the budget runs alone: {batch}"
        else:
            assert len(batch) * longest <= max_tokens
    return batches


def test_pack_empty() -> None:
    assert pack([], 100, 8) == []


def test_pack_groups_within_budget() -> None:
    costs = [10, 3, 7, 3, 12]
    batches = check_pack(costs, max_tokens=24, max_size=8)
    # sorted: 3, 3, 7, 10, 12 → [3, 3, 7] pads to 21; 10 would make 4 × 10 = 40; [10, 12] pads to 24
    assert batches == [[1, 3, 2], [0, 4]]


def test_pack_respects_max_size() -> None:
    batches = check_pack([5] * 10, max_tokens=10_000, max_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_pack_oversized_items_run_alone() -> None:
    costs = [2, 500, 3, 900, 1]
    batches = check_pack(costs, max_tokens=100, max_size=16)
    assert batches == [[4, 0, 2], [1], [3]]


def test_pack_item_exactly_at_budget_runs_alone_and_fits() -> None:
    batches = check_pack([100, 1], max_tokens=100, max_size=16)
    assert batches == [[1], [0]]


def test_pack_randomized_properties() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        n = rng.randint(0, 60)
        max_tokens = rng.randint(1, 400)
        costs = [rng.randint(1, max(1, max_tokens * rng.choice([1, 1, 1, 2]) // 4)) for _ in range(n)]
        if costs and rng.random() < 0.3:
            costs[rng.randrange(n)] = max_tokens + rng.randint(1, 100)  # one oversized item
        check_pack(costs, max_tokens, max_size=rng.randint(1, 20))


def test_pack_does_not_waste_batches_on_equal_items() -> None:
    # 12 items of 10 tokens under a 40-token budget: exactly 4 per batch.
    batches = check_pack([10] * 12, max_tokens=40, max_size=100)
    assert [len(b) for b in batches] == [4, 4, 4]


# -- MicroBatcher -----------------------------------------------------------------------------------------


class Recorder:
    """A fake encoder: doubles each item, remembers each batch, can be held at a gate and told to fail."""

    def __init__(self, fail_if: Callable[[int], bool] = lambda _: False) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_if = fail_if
        self.started = threading.Event()  # set when a batch enters run_batch
        self.gate = threading.Event()  # run_batch waits on it
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, batch: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(batch))
            self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(WAIT_S), "test gate never opened"
        if any(self.fail_if(x) for x in batch):
            raise ValueError(f"bad item in {batch}")
        return [x * 2 for x in batch]

    def hold(self) -> None:
        self.gate.clear()
        self.started.clear()

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, WAIT_S), "no batch started"

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def unit_cost(_: int) -> int:
    return 1


def abs_cost(x: int) -> int:
    return abs(x)


@pytest.fixture()
def make_batcher() -> Iterator[MakeBatcher]:
    made: list[MicroBatcher[int, int]] = []

    def make(
        run: Callable[[list[int]], Sequence[int]],
        cost: Callable[[int], int] = unit_cost,
        **config: Any,
    ) -> MicroBatcher[int, int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, cost, MicroBatchConfig(**config), name="test")
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.shutdown(timeout=1.0)


async def with_blocker(rec: Recorder, batcher: MicroBatcher[int, int]) -> asyncio.Task[list[int]]:
    """Occupy the batcher thread with one item (value 0) held at the gate, so that whatever is submitted
    next waits in the queue and is collected together once the gate opens."""
    rec.hold()
    task = asyncio.create_task(batcher.submit([0]))
    await rec.wait_started()
    return task


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        MicroBatchConfig(max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatchConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatchConfig(max_wait_ms=-1)


async def test_single_submit_returns_results_in_order(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, abs_cost, max_wait_ms=0)
    assert await batcher.submit([5, 1, 3]) == [10, 2, 6]
    # sorted by cost inside the batch, results still in the caller's order
    assert rec.batches == [[1, 3, 5]]
    assert rec.threads == {"test-batcher"}


async def test_empty_submit_runs_nothing(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec)
    assert await batcher.submit([]) == []
    assert rec.batches == []


async def test_concurrent_submits_within_max_wait_share_one_batch(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, abs_cost, max_wait_ms=300)
    inputs = [[30 + i, 10 + i, 20 + i] for i in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in inputs)), WAIT_S)
    assert results == [[2 * v for v in x] for x in inputs]
    assert rec.sizes == [18], rec.batches
    assert rec.batches[0] == sorted(v for x in inputs for v in x)
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.last_batch_size) == (1, 18, 18)
    assert stats.last_batch_tokens == 18 * 35
    assert stats.queue_depth == 0


async def test_submits_from_separate_tasks_arriving_a_little_apart_share_a_batch(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=500)

    async def caller(i: int) -> list[int]:
        await asyncio.sleep(0.01 * i)
        return await batcher.submit([i, 100 + i])

    results = await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(5))), WAIT_S)
    assert results == [[2 * i, 200 + 2 * i] for i in range(5)]
    assert rec.sizes == [10], rec.batches


async def test_queued_work_is_collected_together_even_without_waiting(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    tasks = [asyncio.create_task(batcher.submit([i, -i])) for i in range(1, 5)]
    await asyncio.sleep(0.05)  # let every task queue its items
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(blocker, *tasks), WAIT_S)
    assert results == [[0]] + [[2 * i, -2 * i] for i in range(1, 5)]
    assert rec.sizes == [1, 8]


async def test_max_batch_size_splits(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_batch_size=4, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    tasks = [asyncio.create_task(batcher.submit([10 * i + j for j in range(5)])) for i in range(2)]
    await asyncio.sleep(0.05)
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    await blocker
    assert results == [[2 * (10 * i + j) for j in range(5)] for i in range(2)]
    assert rec.sizes == [1, 4, 4, 2]
    assert all(size <= 4 for size in rec.sizes)
    assert batcher.stats().batches == 4
    assert batcher.stats().items == 11


async def test_max_batch_tokens_splits(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, abs_cost, max_batch_tokens=40, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    # costs 10 each: at most 4 per 40-token batch
    tasks = [asyncio.create_task(batcher.submit([10] * 3)) for _ in range(3)]
    await asyncio.sleep(0.05)
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    await blocker
    assert results == [[20] * 3] * 3
    assert rec.sizes[1:] == [4, 4, 1]
    for batch in rec.batches:
        assert len(batch) == 1 or len(batch) * max(map(abs, batch)) <= 40
    stats = batcher.stats()
    assert (stats.last_batch_size, stats.last_batch_tokens) == (1, 10)


async def test_oversized_item_runs_alone(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, abs_cost, max_batch_tokens=50, max_wait_ms=300)
    results = await asyncio.wait_for(asyncio.gather(batcher.submit([1, 2]), batcher.submit([400, 3])), WAIT_S)
    assert results == [[2, 4], [800, 6]]
    assert [400] in rec.batches
    assert all(len(b) == 1 for b in rec.batches if 400 in b)


async def test_failed_batch_fails_only_its_callers(make_batcher: MakeBatcher) -> None:
    rec = Recorder(fail_if=lambda x: x == -1)
    # abs cost: -1 and 2 cost 1 and 2 (share a batch); 50 cannot join them under a 60-token budget
    batcher = make_batcher(rec, abs_cost, max_batch_tokens=60, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    bad = asyncio.create_task(batcher.submit([-1]))
    neighbour = asyncio.create_task(batcher.submit([2]))
    other = asyncio.create_task(batcher.submit([50]))
    await asyncio.sleep(0.05)
    rec.gate.set()
    done = await asyncio.wait_for(asyncio.gather(bad, neighbour, other, return_exceptions=True), WAIT_S)
    await blocker
    assert rec.batches[1:] == [[-1, 2], [50]]
    assert isinstance(done[0], ValueError)
    assert isinstance(done[1], ValueError)  # same batch as the bad item
    assert done[2] == [100]
    # still serving
    assert await asyncio.wait_for(batcher.submit([7, 8]), WAIT_S) == [14, 16]
    assert batcher.is_alive


async def test_failure_in_one_batch_of_a_split_job_fails_the_job_once(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder(fail_if=lambda x: x == 3)
    batcher = make_batcher(rec, max_batch_size=2, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    job = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
    await asyncio.sleep(0.05)
    rec.gate.set()
    with pytest.raises(ValueError, match="bad item"):
        await asyncio.wait_for(job, WAIT_S)
    await blocker
    assert await asyncio.wait_for(batcher.submit([5]), WAIT_S) == [10]


async def test_wrong_number_of_outputs_is_an_error(make_batcher: MakeBatcher) -> None:
    def short(batch: list[int]) -> list[int]:
        return [2 * x for x in batch][:-1]

    batcher = make_batcher(short, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="gave 1 results"):
        await asyncio.wait_for(batcher.submit([1, 2]), WAIT_S)
    assert batcher.is_alive


async def test_cancelled_caller_while_queued_is_skipped(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    gone = asyncio.create_task(batcher.submit([77, 78]))
    stays = asyncio.create_task(batcher.submit([5, 6]))
    await asyncio.sleep(0.05)
    gone.cancel()
    await asyncio.sleep(0)
    rec.gate.set()
    assert await asyncio.wait_for(stays, WAIT_S) == [10, 12]
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert all(77 not in b and 78 not in b for b in rec.batches), rec.batches
    assert await asyncio.wait_for(batcher.submit([9]), WAIT_S) == [18]


async def test_cancelled_caller_while_its_batch_runs(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=200)
    rec.hold()
    gone = asyncio.create_task(batcher.submit([1, 2]))
    stays = asyncio.create_task(batcher.submit([3, 4]))
    await rec.wait_started()
    assert rec.batches == [[1, 2, 3, 4]]
    gone.cancel()
    await asyncio.sleep(0)
    rec.gate.set()
    assert await asyncio.wait_for(stays, WAIT_S) == [6, 8]
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await asyncio.wait_for(batcher.submit([5]), WAIT_S) == [10]
    assert batcher.is_alive


async def test_stats_count_batches_and_items(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, abs_cost, max_wait_ms=0)
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.last_batch_size, stats.last_batch_tokens) == (0, 0, 0, 0)
    await batcher.submit([3])
    await batcher.submit([2, 7, 1])
    stats = batcher.stats()
    assert (stats.batches, stats.items) == (2, 4)
    assert (stats.last_batch_size, stats.last_batch_tokens) == (3, 21)
    assert stats.queue_depth == 0


async def test_queue_depth_counts_waiting_items(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    waiting = asyncio.create_task(batcher.submit([1, 2, 3]))
    await asyncio.sleep(0.05)
    assert batcher.stats().queue_depth == 3
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, waiting), WAIT_S)
    assert batcher.stats().queue_depth == 0


async def test_shutdown_stops_the_thread_and_refuses_new_work(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    assert await batcher.submit([1]) == [2]
    assert batcher.is_alive
    started = time.monotonic()
    batcher.shutdown()
    assert time.monotonic() - started < 2.0
    assert not batcher.is_alive
    with pytest.raises(RuntimeError, match="stopped"):
        await batcher.submit([1])
    assert await batcher.submit([]) == []
    batcher.shutdown()  # twice is harmless


async def test_shutdown_while_collecting_runs_what_was_collected(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=3000)  # the thread waits for company...
    task = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)
    assert rec.batches == []
    started = time.monotonic()
    await asyncio.to_thread(batcher.shutdown)  # ...until shutdown's sentinel ends the wait
    assert time.monotonic() - started < 2.0
    assert await asyncio.wait_for(task, WAIT_S) == [2, 4]
    assert rec.batches == [[1, 2]]
    assert not batcher.is_alive


async def test_shutdown_while_a_batch_runs_finishes_it(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    rec.hold()
    task = asyncio.create_task(batcher.submit([1, 2]))
    await rec.wait_started()
    stopper = asyncio.create_task(asyncio.to_thread(batcher.shutdown))
    await asyncio.sleep(0.05)
    rec.gate.set()
    assert await asyncio.wait_for(task, WAIT_S) == [2, 4]
    await asyncio.wait_for(stopper, WAIT_S)
    assert not batcher.is_alive


async def test_shutdown_does_not_strand_queued_callers(
    make_batcher: MakeBatcher,
) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    blocker = await with_blocker(rec, batcher)
    queued = asyncio.create_task(batcher.submit([5, 6]))
    await asyncio.sleep(0.05)
    stopper = asyncio.create_task(asyncio.to_thread(batcher.shutdown))
    await asyncio.sleep(0.05)
    rec.gate.set()
    await asyncio.wait_for(stopper, WAIT_S)
    await blocker
    # Either served or failed with an error is acceptable; hanging forever is not.
    done, _ = await asyncio.wait({queued}, timeout=0.5)
    queued.cancel()
    assert done, "a caller whose items were queued at shutdown never got an answer"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_caller_loop_gone_does_not_kill_the_batcher(make_batcher: MakeBatcher) -> None:
    rec = Recorder()
    batcher = make_batcher(rec, max_wait_ms=0)
    rec.hold()

    async def impatient() -> None:
        await asyncio.wait_for(batcher.submit([1]), 0.05)

    # A synchronous wrapper's pattern: asyncio.run(...) with a timeout; its loop closes on return.
    with pytest.raises(TimeoutError):
        asyncio.run(impatient())
    assert rec.started.wait(WAIT_S)
    rec.gate.set()  # the abandoned batch finishes after its caller's loop has closed
    time.sleep(0.1)
    assert batcher.is_alive, "the batcher thread died"
    assert asyncio.run(asyncio.wait_for(batcher.submit([4]), WAIT_S)) == [8]


# -- admission control ------------------------------------------------------------------------------------


async def test_past_max_queued_items_submissions_are_refused_and_queued_ones_finish() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(WAIT_S)
        return [x * 10 for x in items]

    config = MicroBatchConfig(max_batch_size=1, max_wait_ms=0, max_queued_items=4)
    batcher: MicroBatcher[int, int] = MicroBatcher(slow, lambda _: 1, config)
    try:
        first = asyncio.create_task(batcher.submit([1]))  # taken at once: the batcher now blocks in it
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(batcher.submit([2, 3, 4]))
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded, match="max_queued_items=4") as refused:
            await batcher.submit([5, 6])
        assert refused.value.retry_after_s >= 1
        with pytest.raises(InvalidRequest, match="at most 4"):
            await batcher.submit([0] * 5)
        release.set()
        assert await first == [10] and await queued == [20, 30, 40]
        assert await batcher.submit([5, 6]) == [50, 60]  # room again
    finally:
        release.set()
        batcher.shutdown()
