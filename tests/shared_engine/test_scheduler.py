"""Scheduler: continuous batching, token budget, chunked prefill, preemption (no model)."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from shared_engine.errors import InvalidRequest
from shared_engine.outputs import FinishReason
from shared_engine.request import Request, RequestStatus
from shared_engine.scheduler import MAX_GROUP, ScheduledRequest, Scheduler, SchedulerOutput
from tests.shared_engine.factories import (
    FakeKVStore,
    StepResult,
    check_scheduler_invariants,
    fake_token,
    make_request,
    make_scheduler,
    prompt,
    run_to_completion,
    simulate_step,
)

BS = 4


def _add(scheduler: Scheduler, *requests: Request) -> None:
    for request in requests:
        scheduler.add_request(request)


def _ids(requests: Iterable[Request]) -> list[str]:
    return [r.request_id for r in requests]


# -- add_request / finish_request ---------------------------------------------------------------------


def test_add_request_queues_in_arrival_order() -> None:
    _, scheduler = make_scheduler()
    assert not scheduler.has_unfinished
    a, b = make_request("a", prompt(3)), make_request("b", prompt(3))
    _add(scheduler, a, b)
    assert _ids(scheduler.waiting) == ["a", "b"]
    assert scheduler.running == []
    assert scheduler.has_unfinished
    assert a.status is RequestStatus.WAITING


def test_requests_the_free_slots_will_take_do_not_count_as_waiting() -> None:
    """Between steps new requests wait for the next one even where the batch has room: with 2 slots and a
    waiting limit of 2, four requests are taken before a step, and the fifth is refused."""
    _, scheduler = make_scheduler(max_num_seqs=2, max_waiting_requests=2, max_waiting_tokens=13)
    for i in range(4):
        assert scheduler.admission_refusal(3) is None, i
        _add(scheduler, make_request(f"r{i}", prompt(3)))
    assert "2 requests are waiting" in (scheduler.admission_refusal(3) or "")
    scheduler.schedule()  # two run, two wait
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 2
    assert "max_waiting_requests=2" in (scheduler.admission_refusal(3) or "")
    scheduler.finish_request(scheduler.running[0], FinishReason.ABORT)  # the first waiting takes its slot
    assert scheduler.admission_refusal(3) is None
    assert "max_waiting_tokens=13" in (scheduler.admission_refusal(11) or "")


def test_a_request_no_queue_could_take_is_the_callers_mistake() -> None:
    """More prompt tokens than the queue holds at all is a 400, not a 429 to retry for ever."""
    _, scheduler = make_scheduler(max_num_seqs=2, max_waiting_requests=2, max_waiting_tokens=13)
    assert scheduler.admission_refusal(13) is None
    with pytest.raises(InvalidRequest, match=r"hold 14 tokens .* at most 13 \(max_waiting_tokens\)"):
        scheduler.admission_refusal(14)


@pytest.mark.parametrize(("max_num_seqs", "max_waiting", "most"), [(2, 3, MAX_GROUP), (100, 60, 160)])
def test_a_group_larger_than_any_request_may_be_is_refused(
    max_num_seqs: int, max_waiting: int, most: int
) -> None:
    """One request's sequences are taken together, but never more than the batch and the queue hold or
    OpenAI's most choices, whichever is more: past that one caller would hold everyone else off."""
    _, scheduler = make_scheduler(max_num_seqs=max_num_seqs, max_waiting_requests=max_waiting)
    assert scheduler.admission_refusal(3 * most, num_requests=most) is None
    with pytest.raises(InvalidRequest, match=f"takes at most {most} from one request") as raised:
        scheduler.admission_refusal(3 * most + 3, num_requests=most + 1)
    assert raised.value.param == "n"


@pytest.mark.parametrize(("prompt_len", "max_tokens"), [(4, 6), (9, 1), (1, 9), (30, 30)])
def test_add_request_rejects_a_request_larger_than_the_pool(prompt_len: int, max_tokens: int) -> None:
    kv, scheduler = make_scheduler(num_blocks=2, block_size=BS)
    with pytest.raises(InvalidRequest, match="KV blocks") as info:
        scheduler.add_request(make_request("big", prompt(prompt_len), max_tokens=max_tokens))
    assert info.value.param == "max_tokens"
    assert isinstance(info.value, ValueError)
    assert not scheduler.has_unfinished
    assert kv.num_free_blocks == 2


@pytest.mark.parametrize(("prompt_len", "max_tokens"), [(4, 4), (7, 1), (1, 7)])
def test_add_request_accepts_a_request_that_fills_the_pool(prompt_len: int, max_tokens: int) -> None:
    _, scheduler = make_scheduler(num_blocks=2, block_size=BS)
    request = make_request("fits", prompt(prompt_len), max_tokens=max_tokens)
    scheduler.add_request(request)
    assert list(scheduler.waiting) == [request]
    steps = run_to_completion(scheduler)
    assert request.num_output_tokens == max_tokens
    assert request.finish_reason is FinishReason.LENGTH
    assert steps[-1].finished == [request]


def test_finish_running_request_frees_its_blocks() -> None:
    kv, scheduler = make_scheduler(num_blocks=8)
    a = make_request("a", prompt(10))
    b = make_request("b", prompt(3, base=100))
    _add(scheduler, a, b)
    simulate_step(scheduler)
    assert len(a.block_ids) == 3
    assert kv.num_free_blocks == 4

    scheduler.finish_request(a, FinishReason.ABORT)
    assert a.status is RequestStatus.FINISHED
    assert a.is_finished
    assert a.finish_reason is FinishReason.ABORT
    assert a.block_ids == []
    assert scheduler.running == [b]
    assert kv.num_free_blocks == 7
    check_scheduler_invariants(scheduler)

    # Finishing twice is a no-op.
    scheduler.finish_request(a, FinishReason.STOP)
    assert a.finish_reason is FinishReason.ABORT
    assert kv.num_free_blocks == 7

    # The next step only schedules b.
    assert simulate_step(scheduler).scheduled == [("b", 1)]


def test_finish_waiting_request_removes_it_from_the_queue() -> None:
    _, scheduler = make_scheduler()
    a, b, c = (make_request(x, prompt(3)) for x in "abc")
    _add(scheduler, a, b, c)
    scheduler.finish_request(b, FinishReason.ABORT)
    assert _ids(scheduler.waiting) == ["a", "c"]
    assert b.status is RequestStatus.FINISHED
    assert b.finish_reason is FinishReason.ABORT
    assert simulate_step(scheduler).scheduled == [("a", 3), ("c", 3)]


def test_finishing_a_request_makes_room_for_the_waiting_head() -> None:
    kv, scheduler = make_scheduler(num_blocks=3)
    a = make_request("a", prompt(8), max_tokens=4)
    b = make_request("b", prompt(6, base=100), max_tokens=4)
    _add(scheduler, a, b)
    assert simulate_step(scheduler).scheduled == [("a", 8)]  # b needs 2 blocks, 1 free
    assert simulate_step(scheduler).scheduled == [("a", 1)]  # a takes the last block
    assert kv.num_free_blocks == 0
    scheduler.finish_request(a, FinishReason.ABORT)
    assert simulate_step(scheduler).scheduled == [("b", 6)]


# -- admission: FCFS, budget, max_num_seqs ---------------------------------------------------------------


def test_waiting_requests_are_admitted_first_come_first_served() -> None:
    _, scheduler = make_scheduler()
    requests = [make_request(f"r{i}", prompt(3, base=10 * i), arrival_time=float(i)) for i in range(4)]
    _add(scheduler, *requests)
    step = simulate_step(scheduler)
    assert step.scheduled == [("r0", 3), ("r1", 3), ("r2", 3), ("r3", 3)]
    assert scheduler.running == requests
    assert not scheduler.waiting
    for r in requests:
        assert r.status is RequestStatus.RUNNING
        assert r.first_scheduled_time is not None
        assert r.num_cached_tokens == 0
    # Decodes keep the same order.
    assert simulate_step(scheduler).scheduled == [("r0", 1), ("r1", 1), ("r2", 1), ("r3", 1)]


def test_the_waiting_head_blocks_smaller_requests_behind_it() -> None:
    """FCFS: when the head does not fit in the block pool nothing behind it jumps the queue."""
    kv, scheduler = make_scheduler(num_blocks=4)
    a = make_request("a", prompt(8), max_tokens=4)
    b = make_request("b", prompt(12, base=100), max_tokens=4)
    c = make_request("c", prompt(2, base=200), max_tokens=4)
    _add(scheduler, a, b, c)
    step = simulate_step(scheduler)
    assert step.scheduled == [("a", 8)]
    assert _ids(scheduler.waiting) == ["b", "c"]
    assert kv.num_free_blocks == 2
    # Failed admissions allocate nothing.
    assert b.block_ids == []
    assert b.num_computed_tokens == 0
    assert b.status is RequestStatus.WAITING
    check_scheduler_invariants(scheduler)


def test_token_budget_splits_a_prompt_and_preserves_order() -> None:
    _, scheduler = make_scheduler(max_num_batched_tokens=10)
    a = make_request("a", prompt(6))
    b = make_request("b", prompt(6, base=100))
    c = make_request("c", prompt(2, base=200))
    _add(scheduler, a, b, c)
    s1 = simulate_step(scheduler)
    assert s1.scheduled == [("a", 6), ("b", 4)]
    assert s1.completed == ["a"]
    assert _ids(scheduler.waiting) == ["c"]
    s2 = simulate_step(scheduler)
    # Running first (a's decode, b's last chunk), then c with what is left of the budget.
    assert s2.scheduled == [("a", 1), ("b", 2), ("c", 2)]
    assert s2.completed == ["a", "b", "c"]
    assert s2.out.num_tokens == 5


def test_long_prompt_is_prefilled_in_chunks_while_a_decode_runs_every_step() -> None:
    kv, scheduler = make_scheduler(max_num_batched_tokens=8)
    a = make_request("a", prompt(3), max_tokens=10)
    b = make_request("b", prompt(20, base=100))
    _add(scheduler, a, b)
    store = FakeKVStore(BS)
    steps = [simulate_step(scheduler, store=store) for _ in range(5)]
    assert [s.scheduled for s in steps] == [
        [("a", 3), ("b", 5)],
        [("a", 1), ("b", 7)],
        [("a", 1), ("b", 7)],
        [("a", 1), ("b", 1)],
        [("a", 1), ("b", 1)],
    ]
    assert [s.completed for s in steps] == [["a"], ["a"], ["a"], ["a", "b"], ["a", "b"]]
    assert all(s.out.num_tokens <= 8 for s in steps)
    assert b.num_output_tokens == 2
    assert b.num_computed_tokens == 21
    # Chunks publish their full blocks as they go.
    assert len(b.block_hashes) == 21 // BS
    check_scheduler_invariants(scheduler)
    assert kv.usage > 0


def test_completes_prompt_only_on_the_last_chunk() -> None:
    _, scheduler = make_scheduler(max_num_batched_tokens=4)
    a = make_request("a", prompt(10))
    scheduler.add_request(a)
    flags: list[bool] = []
    for _ in range(4):
        out = scheduler.schedule()
        (item,) = out.scheduled
        flags.append(item.completes_prompt)
        scheduler.update_after_step(out)
        if flags[-1]:
            a.append_output_token(fake_token(a))
    assert flags == [False, False, True, True]


def test_chunked_prefill_disabled_waits_until_the_prompt_fits_the_budget() -> None:
    _, scheduler = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    a = make_request("a", prompt(3), max_tokens=3)
    b = make_request("b", prompt(8, base=100))
    c = make_request("c", prompt(1, base=200))
    _add(scheduler, a, b, c)
    steps = [simulate_step(scheduler) for _ in range(5)]
    assert [s.scheduled for s in steps] == [
        [("a", 3)],  # b (8 tokens) does not fit the 5 left, and c may not jump ahead of it
        [("a", 1)],
        [("a", 1)],  # a finishes here
        [("b", 8)],  # b takes the whole budget in one piece
        [("b", 1), ("c", 1)],
    ]
    assert steps[2].finished == [a]
    assert steps[3].completed == ["b"]


def test_chunked_prefill_disabled_admits_a_prompt_that_fits_what_is_left() -> None:
    _, scheduler = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    a = make_request("a", prompt(3), max_tokens=3)
    b = make_request("b", prompt(7, base=100))
    _add(scheduler, a, b)
    assert simulate_step(scheduler).scheduled == [("a", 3)]
    assert simulate_step(scheduler).scheduled == [("a", 1), ("b", 7)]


def test_chunked_prefill_disabled_still_serves_a_prompt_longer_than_the_budget() -> None:
    """A prompt larger than the whole budget could never fit: it is admitted alone and spread over
    steps rather than starving forever."""
    _, scheduler = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    a = make_request("a", prompt(20))
    b = make_request("b", prompt(2, base=100))
    _add(scheduler, a, b)
    steps = [simulate_step(scheduler) for _ in range(3)]
    assert [s.scheduled for s in steps] == [[("a", 8)], [("a", 8)], [("a", 4), ("b", 2)]]
    assert steps[2].completed == ["a", "b"]


def test_max_num_seqs_caps_the_running_set() -> None:
    _, scheduler = make_scheduler(max_num_seqs=2)
    requests = [make_request(f"r{i}", prompt(2, base=10 * i), max_tokens=2) for i in range(5)]
    _add(scheduler, *requests)
    s1 = simulate_step(scheduler)
    assert s1.scheduled == [("r0", 2), ("r1", 2)]
    assert _ids(scheduler.waiting) == ["r2", "r3", "r4"]
    s2 = simulate_step(scheduler)
    assert s2.scheduled == [("r0", 1), ("r1", 1)]
    assert s2.finished == requests[:2]
    s3 = simulate_step(scheduler)
    assert s3.scheduled == [("r2", 2), ("r3", 2)]

    def check(step: StepResult) -> None:
        assert len(scheduler.running) <= 2
        assert len(step.scheduled) <= 2

    run_to_completion(scheduler, on_step=check)
    assert all(r.num_output_tokens == 2 for r in requests)


def test_an_exhausted_budget_admits_nothing() -> None:
    _, scheduler = make_scheduler(max_num_batched_tokens=2)
    a = make_request("a", prompt(1), max_tokens=8)
    b = make_request("b", prompt(1, base=100), max_tokens=8)
    c = make_request("c", prompt(1, base=200), max_tokens=8)
    _add(scheduler, a, b, c)
    assert simulate_step(scheduler).scheduled == [("a", 1), ("b", 1)]
    assert simulate_step(scheduler).scheduled == [("a", 1), ("b", 1)]
    assert _ids(scheduler.waiting) == ["c"]


def test_empty_scheduler_gives_an_empty_step() -> None:
    _, scheduler = make_scheduler()
    out = scheduler.schedule()
    assert out.is_empty
    assert out.num_tokens == 0
    assert out.preempted == []
    scheduler.update_after_step(out)


def test_scheduler_output_totals() -> None:
    a, b = make_request("a", prompt(5)), make_request("b", prompt(3))
    out = SchedulerOutput([ScheduledRequest(a, 5), ScheduledRequest(b, 2)])
    assert out.num_tokens == 7
    assert not out.is_empty
    assert [s.completes_prompt for s in out.scheduled] == [True, False]


# -- preemption ---------------------------------------------------------------------------------------------


def test_preemption_takes_the_youngest_first_and_requeues_at_the_front() -> None:
    kv, scheduler = make_scheduler(num_blocks=3, max_num_seqs=3, enable_prefix_caching=False)
    a, b, c, d = (make_request(x, prompt(4, base=100 * i), max_tokens=4) for i, x in enumerate("abcd"))
    _add(scheduler, a, b, c, d)
    s1 = simulate_step(scheduler)
    assert s1.scheduled == [("a", 4), ("b", 4), ("c", 4)]
    assert kv.num_free_blocks == 0

    # Every decode now needs a second block. a gets c's block (c is youngest); then b is youngest
    # and has to preempt itself.
    s2 = simulate_step(scheduler)
    assert s2.scheduled == [("a", 1)]
    assert s2.preempted == ["c", "b"]
    assert scheduler.running == [a]
    assert _ids(scheduler.waiting) == ["b", "c", "d"]
    assert scheduler.num_preemptions == 2
    for r in (b, c):
        assert r.status is RequestStatus.WAITING
        assert r.num_preemptions == 1
        assert r.num_computed_tokens == 0
        assert r.block_ids == []
        assert r.num_output_tokens == 1  # generated tokens are kept and recomputed later
    assert d.num_preemptions == 0
    check_scheduler_invariants(scheduler)


def test_a_preempted_request_is_readmitted_and_recomputes_prompt_and_outputs() -> None:
    kv, scheduler = make_scheduler(num_blocks=3, max_num_seqs=3, enable_prefix_caching=False)
    a, b, c, d = (make_request(x, prompt(4, base=100 * i), max_tokens=4) for i, x in enumerate("abcd"))
    _add(scheduler, a, b, c, d)
    store = FakeKVStore(BS)
    simulate_step(scheduler, store=store)
    assert simulate_step(scheduler, store=store).preempted == ["c", "b"]
    b_first_token = b.output_token_ids[0]

    assert simulate_step(scheduler, store=store).scheduled == [("a", 1)]  # b needs 2 blocks, 1 free
    s4 = simulate_step(scheduler, store=store)
    assert s4.scheduled == [("a", 1)]
    assert s4.finished == [a]
    assert kv.num_free_blocks == 3

    s5 = simulate_step(scheduler, store=store)
    # b recomputes its 4 prompt tokens and its 1 output token in one go and samples its 2nd token.
    assert s5.scheduled == [("b", 5)]
    assert s5.completed == ["b"]
    assert b.output_token_ids[0] == b_first_token
    assert b.num_output_tokens == 2
    assert b.num_computed_tokens == 5
    assert b.num_cached_tokens == 0
    assert _ids(scheduler.waiting) == ["c", "d"]

    def check(_: StepResult) -> None:
        check_scheduler_invariants(scheduler)

    run_to_completion(scheduler, store=store, on_step=check)
    for r in (a, b, c, d):
        assert r.finish_reason is FinishReason.LENGTH
        assert r.num_output_tokens == 4
    assert scheduler.num_preemptions >= 2
    assert kv.num_free_blocks == 3


def test_no_admissions_in_a_step_that_preempted() -> None:
    kv, scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=5, enable_prefix_caching=False)
    a = make_request("a", prompt(3), max_tokens=8)
    b = make_request("b", prompt(12, base=100), max_tokens=4)
    _add(scheduler, a, b)
    assert simulate_step(scheduler).scheduled == [("a", 3), ("b", 2)]
    assert simulate_step(scheduler).scheduled == [("a", 1), ("b", 4)]
    s3 = simulate_step(scheduler)
    # a takes the last free block; b (youngest) cannot grow and preempts itself.
    assert s3.scheduled == [("a", 1)]
    assert s3.preempted == ["b"]
    # 2 blocks and 4 budget tokens are free, enough for a 4-token chunk of b, but nothing is admitted.
    assert kv.num_free_blocks == 2
    assert list(scheduler.waiting) == [b]
    assert b.num_computed_tokens == 0
    s4 = simulate_step(scheduler)
    assert s4.scheduled == [("a", 1), ("b", 4)]
    assert s4.preempted == []


def test_preempted_request_reuses_its_own_cached_blocks() -> None:
    kv, scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=5)
    a = make_request("a", prompt(3), max_tokens=8)
    b = make_request("b", prompt(12, base=100), max_tokens=4)
    _add(scheduler, a, b)
    store = FakeKVStore(BS)
    simulate_step(scheduler, store=store)
    simulate_step(scheduler, store=store)
    assert len(b.block_hashes) == 1  # 6 tokens computed: block 0 published
    b_head = b.block_ids[0]
    assert simulate_step(scheduler, store=store).preempted == ["b"]
    assert kv.block_hash[b_head] is not None  # freed but still cached
    lookups = (kv.prefix_queries, kv.prefix_hits)

    s4 = simulate_step(scheduler, store=store)
    assert s4.scheduled == [("a", 1), ("b", 4)]
    assert b.num_computed_tokens == 8
    # Finding its own blocks again is neither a prompt cache hit nor a lookup of the prefix cache.
    assert b.num_cached_tokens == 0
    assert (kv.prefix_queries, kv.prefix_hits) == lookups
    assert b.block_ids[0] == b_head
    run_to_completion(scheduler, store=store)
    assert b.num_output_tokens == 4


def test_preemption_never_touches_requests_already_scheduled_this_step() -> None:
    kv, scheduler = make_scheduler(num_blocks=4, enable_prefix_caching=False)
    a = make_request("a", prompt(4), max_tokens=4)
    b = make_request("b", prompt(3, base=100), max_tokens=4)
    c = make_request("c", prompt(8, base=200), max_tokens=4)
    _add(scheduler, a, b, c)
    simulate_step(scheduler)
    assert kv.num_free_blocks == 0
    # a needs a new block (5 tokens); b fits in its block; c is youngest and is preempted for a.
    step = simulate_step(scheduler)
    assert step.preempted == ["c"]
    assert step.scheduled == [("a", 1), ("b", 1)]
    assert scheduler.running == [a, b]
    check_scheduler_invariants(scheduler)


def test_finishing_one_sharer_keeps_the_shared_prefix_blocks() -> None:
    kv, scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    a = make_request("a", prompt(8), max_tokens=4)
    scheduler.add_request(a)
    simulate_step(scheduler)
    b = make_request("b", [*prompt(8), 99], max_tokens=4)
    scheduler.add_request(b)
    step = simulate_step(scheduler)
    assert step.scheduled == [("a", 1), ("b", 1)]
    assert b.num_cached_tokens == 8
    shared = b.block_ids[:2]
    assert [kv.ref_counts[x] for x in shared] == [2, 2]
    free_before = kv.num_free_blocks
    scheduler.finish_request(b, FinishReason.ABORT)
    assert [kv.ref_counts[x] for x in shared] == [1, 1]
    assert kv.num_free_blocks == free_before + 1  # only b's private block
    assert simulate_step(scheduler).scheduled == [("a", 1)]


# -- prefix caching through the scheduler ----------------------------------------------------------------


def test_second_request_with_the_same_prefix_skips_cached_tokens() -> None:
    kv, scheduler = make_scheduler(num_blocks=16)
    a = make_request("a", prompt(10), max_tokens=8)
    scheduler.add_request(a)
    store = FakeKVStore(BS)
    simulate_step(scheduler, store=store)
    b = make_request("b", prompt(10), max_tokens=8)
    scheduler.add_request(b)
    step = simulate_step(scheduler, store=store)
    assert step.scheduled == [("a", 1), ("b", 2)]
    assert step.completed == ["a", "b"]
    assert b.num_cached_tokens == 8
    assert b.block_ids[:2] == a.block_ids[:2]
    assert b.block_ids[2] != a.block_ids[2]
    assert [kv.ref_counts[x] for x in a.block_ids[:3]] == [2, 2, 1]
    assert kv.prefix_hit_rate == pytest.approx(8 / 20)
    check_scheduler_invariants(scheduler)
    run_to_completion(scheduler, store=store)
    assert a.num_output_tokens == b.num_output_tokens == 8
    assert kv.num_free_blocks == 16


def test_identical_prompt_of_whole_blocks_still_computes_its_last_block() -> None:
    kv, scheduler = make_scheduler(num_blocks=16)
    a = make_request("a", prompt(8), max_tokens=8)
    scheduler.add_request(a)
    simulate_step(scheduler)
    b = make_request("b", prompt(8), max_tokens=8)
    scheduler.add_request(b)
    step = simulate_step(scheduler)
    assert step.scheduled == [("a", 1), ("b", 4)]
    assert b.num_cached_tokens == 4
    assert step.completed == ["a", "b"]
    assert b.block_ids[0] == a.block_ids[0]
    assert b.block_ids[1] != a.block_ids[1]
    assert (kv.prefix_queries, kv.prefix_hits) == (16, 4)


def test_requests_admitted_in_the_same_step_do_not_hit_each_other() -> None:
    kv, scheduler = make_scheduler(num_blocks=16)
    a = make_request("a", prompt(9))
    b = make_request("b", prompt(9))
    _add(scheduler, a, b)
    step = simulate_step(scheduler)
    assert step.scheduled == [("a", 9), ("b", 9)]
    assert kv.prefix_hits == 0
    # One copy is published; b's duplicate stays private to b.
    assert len(kv.cached) == 2
    assert all(kv.block_hash[x] is None for x in b.block_ids)
    assert b.block_hashes == a.block_hashes
    check_scheduler_invariants(scheduler)


def test_prefix_lookup_of_a_failed_admission_is_not_counted() -> None:
    kv, scheduler = make_scheduler(num_blocks=4)
    a = make_request("a", prompt(12), max_tokens=2)
    scheduler.add_request(a)
    simulate_step(scheduler)
    assert kv.num_free_blocks == 1
    assert (kv.prefix_queries, kv.prefix_hits) == (12, 0)
    b = make_request("b", [*prompt(8), 7, 7, 7, 7, 7], max_tokens=3)
    scheduler.add_request(b)
    # a's decode takes the last block; b would hit a's first 2 blocks but needs 2 more.
    step = simulate_step(scheduler)
    assert step.scheduled == [("a", 1)]
    assert step.finished == [a]
    assert list(scheduler.waiting) == [b]
    assert (kv.prefix_queries, kv.prefix_hits) == (12, 0)
    # Once a is gone b is admitted, hitting the (now free) cached blocks; counted exactly once.
    step = simulate_step(scheduler)
    assert step.scheduled == [("b", 5)]
    assert b.num_cached_tokens == 8
    assert (kv.prefix_queries, kv.prefix_hits) == (12 + 13, 8)


def test_prefix_lookup_is_not_counted_while_a_prompt_waits_for_budget() -> None:
    kv, scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=8, enable_chunked_prefill=False)
    a = make_request("a", prompt(5), max_tokens=5)
    # Shares a's first block; the 8 uncached tokens never fit the 7 tokens a's decode leaves over.
    b = make_request("b", [*prompt(4), *prompt(8, base=100)])
    _add(scheduler, a, b)
    steps = [simulate_step(scheduler) for _ in range(6)]
    assert steps[4].finished == [a]
    assert steps[5].scheduled == [("b", 8)]
    assert b.num_cached_tokens == 4
    # One lookup per admitted request: a (5 tokens, no hit) and b (12 tokens, 4 hit).
    assert (kv.prefix_queries, kv.prefix_hits) == (5 + 12, 4)
    assert kv.prefix_hit_rate == pytest.approx(4 / 17)


def test_failed_admission_without_prefix_caching_keeps_counters_at_zero() -> None:
    kv, scheduler = make_scheduler(num_blocks=2, enable_prefix_caching=False)
    a = make_request("a", prompt(5), max_tokens=3)
    b = make_request("b", prompt(4, base=100), max_tokens=4)
    _add(scheduler, a, b)
    assert simulate_step(scheduler).scheduled == [("a", 5)]  # a holds both blocks: b cannot start
    assert list(scheduler.waiting) == [b]
    assert kv.prefix_queries == 0
    assert kv.prefix_hits == 0


# -- randomized end-to-end runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("chunked", "prefix_caching"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_random_workloads_finish_with_consistent_bookkeeping(
    seed: int, chunked: bool, prefix_caching: bool
) -> None:
    rng = random.Random(seed)
    num_blocks = rng.randint(5, 14)  # small pools: preemption is frequent
    budget = rng.choice([4, 7, 16, 64])
    kv, scheduler = make_scheduler(
        num_blocks=num_blocks,
        block_size=BS,
        max_num_seqs=rng.randint(1, 8),
        max_num_batched_tokens=budget,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=prefix_caching,
    )
    prefixes = [prompt(rng.randint(1, 12), base=1000 * i) for i in range(3)]
    pending: list[Request] = []
    for i in range(rng.randint(6, 16)):
        max_tokens = rng.randint(1, 12)
        room = num_blocks * BS - max_tokens
        tokens = (rng.choice(prefixes) + prompt(rng.randint(0, 10), base=50_000 + 100 * i))[:room]
        if not tokens:
            tokens = [7]
        pending.append(make_request(f"r{i}", tokens, max_tokens=max_tokens))
    all_requests = list(pending)
    store = FakeKVStore(BS)
    before: dict[str, list[str]] = {"running": [], "waiting": []}

    def check(step: StepResult) -> None:
        assert step.out.num_tokens <= budget
        assert all(n > 0 for _, n in step.scheduled)
        ids = [rid for rid, _ in step.scheduled]
        running, waiting = before["running"], before["waiting"]
        # Running requests are served in order first, then waiting ones are admitted FCFS.
        continued = [rid for rid in ids if rid in running]
        admitted = [rid for rid in ids if rid not in running]
        assert ids == continued + admitted
        assert continued == [rid for rid in running if rid in continued]
        if step.out.preempted:
            # Victims are the youngest running requests, youngest first; nothing is admitted.
            assert step.preempted == running[::-1][: len(step.preempted)]
            assert admitted == []
            assert all(r.status is RequestStatus.WAITING for r in step.out.preempted)
            assert [r.request_id for r in scheduler.waiting][: len(step.preempted)] == step.preempted[::-1]
        else:
            assert admitted == waiting[: len(admitted)]
        check_scheduler_invariants(scheduler)
        # New arrivals between steps.
        for _ in range(rng.choice([0, 0, 1, 3])):
            if pending:
                scheduler.add_request(pending.pop(0))
        before["running"] = [r.request_id for r in scheduler.running]
        before["waiting"] = [r.request_id for r in scheduler.waiting]

    scheduler.add_request(pending.pop(0))
    before["waiting"] = [r.request_id for r in scheduler.waiting]
    steps = run_to_completion(scheduler, store=store, on_step=check)
    while pending:  # arrivals after the queue drained
        scheduler.add_request(pending.pop(0))
        before["waiting"] = [r.request_id for r in scheduler.waiting]
        steps += run_to_completion(scheduler, store=store, on_step=check)

    for r in all_requests:
        assert r.is_finished
        assert r.finish_reason is FinishReason.LENGTH
        assert r.num_output_tokens == r.params.max_tokens
        # The preemption-free token stream: position i of the output always got the same token.
        expected = [fake_token(make_request(r.request_id, [0])) + i for i in range(r.params.max_tokens)]
        assert r.output_token_ids == expected
        assert r.block_ids == []
    assert kv.num_free_blocks == num_blocks
    assert kv.ref_counts == [0] * num_blocks
    if not prefix_caching:
        assert kv.cached == {}
    assert steps
