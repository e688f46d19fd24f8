"""What the engine tells observers: each request's timestamps and RequestMetrics, inter-token latency,
prefix-cache counters, the per-step observer, and the micro-batcher's per-batch record and per-job
timing (a small random Llama on the real engine; a fake encoder for the batcher)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import pytest

from shared_engine.async_engine import AsyncLLMEngine
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.micro_batcher import BatchRun, MicroBatchConfig, MicroBatcher
from shared_engine.outputs import FinishReason, RequestMetrics, RequestOutput, merge_outputs
from shared_engine.sampling_params import OutputKind, SamplingParams
from shared_engine.timing import measure
from tests.helpers.tiny_llm import tiny_engine

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
PROMPT = list(range(3, 40))  # 37 tokens: four full blocks of 8


@pytest.fixture()
def engine(smollm2_folder: Path) -> LLMEngine:
    return tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128)))


def run_to_end(engine: LLMEngine, request_id: str) -> list[RequestOutput]:
    outputs: list[RequestOutput] = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


def test_request_timestamps_are_ordered_and_metrics_add_up(engine: LLMEngine) -> None:
    engine.add_request("r", PROMPT, GREEDY, arrival_time=time.monotonic())
    request = engine.live["r"].request
    outputs = run_to_end(engine, "r")

    assert request.first_scheduled_time is not None and request.first_token_time is not None
    assert request.arrival_time <= request.first_scheduled_time <= request.first_token_time
    assert request.first_token_time < request.last_token_time == request.finished_time  # type: ignore[operator]

    assert [o.metrics is not None for o in outputs] == [False] * 7 + [True]
    m = outputs[-1].metrics
    assert m is not None and m.ttft_s is not None
    assert 0 <= m.queue_s <= m.ttft_s <= m.e2e_s
    assert 0 < m.inference_s <= m.e2e_s
    assert m.queue_s + m.inference_s == pytest.approx(m.e2e_s)
    assert (m.num_prompt_tokens, m.num_output_tokens, m.num_cached_tokens) == (37, 8, 0)
    assert m.tpot_s == pytest.approx((m.e2e_s - m.ttft_s) / 7)


def test_inter_token_latency_covers_every_output_after_the_first(engine: LLMEngine) -> None:
    engine.add_request("r", PROMPT, GREEDY)
    outputs = run_to_end(engine, "r")
    assert outputs[0].itl_s is None
    itls = [o.itl_s for o in outputs[1:]]
    assert all(itl is not None and itl > 0 for itl in itls)
    m = outputs[-1].metrics
    assert m is not None and m.ttft_s is not None
    # The last token's step is the finish: the gaps between outputs span the time after the first one.
    assert sum(itls) == pytest.approx(m.e2e_s - m.ttft_s)  # type: ignore[arg-type]


def test_a_request_aborted_before_it_ran_reports_only_queue_time(engine: LLMEngine) -> None:
    engine.add_request("r", PROMPT, GREEDY)
    out = engine.abort_request("r")
    assert out is not None and out.finish_reason is FinishReason.ABORT
    m = out.metrics
    assert m is not None
    assert m.ttft_s is None and m.tpot_s is None and m.inference_s == 0
    assert m.queue_s == pytest.approx(m.e2e_s) and m.num_output_tokens == 0


def test_stats_count_prefix_cache_lookups_and_hits_in_tokens(engine: LLMEngine) -> None:
    before = engine.stats()
    assert (before.prefix_cache_queries, before.prefix_cache_hits) == (0, 0)
    engine.add_request("first", PROMPT, GREEDY)
    run_to_end(engine, "first")
    engine.add_request("second", PROMPT, GREEDY)
    outputs = run_to_end(engine, "second")
    stats = engine.stats()
    assert stats.prefix_cache_queries == 2 * len(PROMPT)
    assert stats.prefix_cache_hits == 32  # the second request finds the first's four full blocks
    m = outputs[-1].metrics
    assert m is not None and m.num_cached_tokens == 32
    assert (stats.last_batch_size, stats.last_batch_tokens) == (1, 1)  # the last step: one decode


def test_preemption_reports_what_each_prompt_found_cached(smollm2_folder: Path) -> None:
    """A preempted request finds its own blocks, output included, when it comes back: that is neither
    a prompt token served from the cache nor a lookup of the prefix cache."""
    small = tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=4, num_blocks=16)))
    shared = list(range(3, 11))  # two full blocks that the later requests find cached
    prompts = {"a": [*shared, 50, 51, 52], "b": [*shared, 60, 61], "c": [*shared, 70, 71, 72]}
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    small.add_request("a", prompts["a"], params)
    small.step()  # a's prompt is computed and its two shared blocks are published
    for rid in "bc":
        small.add_request(rid, prompts[rid], params)
    last: dict[str, RequestOutput] = {}
    while small.has_unfinished_requests():
        last.update((o.request_id, o) for o in small.step())
    stats = small.stats()
    assert stats.num_preemptions > 0
    assert {rid: o.num_cached_tokens for rid, o in last.items()} == {"a": 0, "b": 8, "c": 8}
    assert stats.prefix_cache_queries == sum(map(len, prompts.values()))
    assert stats.prefix_cache_hits == 16


def test_merge_keeps_the_last_outputs_metrics() -> None:
    metrics = RequestMetrics(0.1, 0.2, 0.5, 0.4, 3, 2, 0)
    first = RequestOutput("r", "a", [1], 3, 1, itl_s=None)
    last = RequestOutput("r", "b", [2], 3, 2, finish_reason=FinishReason.STOP, itl_s=0.3, metrics=metrics)
    merged = merge_outputs([first, last])
    assert merged.metrics is metrics and merged.token_ids == [1, 2]
    assert merged.itl_s is None  # no single gap describes two outputs


async def test_step_observer_and_caller_timing(engine: LLMEngine) -> None:
    seen: list[tuple[list[RequestOutput], float, int]] = []

    def on_step(eng: LLMEngine, outputs: list[RequestOutput], step_s: float) -> None:
        seen.append((outputs, step_s, eng.stats().last_batch_size))

    front = AsyncLLMEngine(engine, on_step)
    try:
        final = dataclasses.replace(GREEDY, output_kind=OutputKind.FINAL_ONLY)
        with measure() as timing:
            (whole,) = [o async for o in front.generate("r", PROMPT, final)]
    finally:
        front.shutdown()
    m = whole.metrics
    assert m is not None and m.num_output_tokens == 8
    assert (timing.queue_s, timing.inference_s) == pytest.approx((m.queue_s, m.inference_s))
    assert len(seen) == 8 and all(step_s > 0 and size == 1 for _, step_s, size in seen)
    step_outputs = [o for outputs, _, _ in seen for o in outputs]
    assert [o.itl_s is None for o in step_outputs] == [True] + [False] * 7
    assert step_outputs[-1].metrics == m


async def test_a_failing_step_observer_does_not_stop_the_engine(engine: LLMEngine) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    front = AsyncLLMEngine(engine, broken)
    try:
        outputs = [o async for o in front.generate("r", PROMPT, GREEDY)]
        assert outputs[-1].finished and front.is_alive
    finally:
        front.shutdown()


# -- micro-batcher ------------------------------------------------------------------------------------------


class SlowDoubler:
    """A fake encoder that takes ``seconds`` per batch and can be held at a gate."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: list[int]) -> list[int]:
        assert self.gate.wait(5.0)
        time.sleep(self.seconds)
        return [2 * x for x in batch]


async def test_batch_observer_sees_sizes_padding_queue_and_run_time() -> None:
    runs: list[BatchRun] = []
    encoder = SlowDoubler(0.05)
    config = MicroBatchConfig(max_batch_tokens=64, max_wait_ms=0)
    batcher: MicroBatcher[int, int] = MicroBatcher(encoder, lambda x: x, config, on_batch=runs.append)
    try:
        encoder.gate.clear()
        blocker = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the blocker's batch is running (held); the next submissions queue
        queued = asyncio.gather(batcher.submit([3, 5]), batcher.submit([4]))
        await asyncio.sleep(0.1)
        encoder.gate.set()
        assert await blocker == [2]
        assert await queued == [[6, 10], [8]]
    finally:
        batcher.shutdown()
    assert [(r.size, r.padded_tokens) for r in runs] == [(1, 1), (3, 15)]  # 3 items × the longest, 5
    second = runs[1]
    assert len(second.queue_s) == 3 and all(q >= 0.1 for q in second.queue_s)
    assert all(r.run_s >= 0.05 for r in runs)


async def test_each_submission_reports_its_queue_and_inference_time() -> None:
    encoder = SlowDoubler(0.05)
    batcher: MicroBatcher[int, int] = MicroBatcher(encoder, lambda _: 1, MicroBatchConfig(max_wait_ms=0))
    try:
        encoder.gate.clear()
        blocker = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)
        with measure() as timing:
            waiting = asyncio.create_task(batcher.submit([2, 3]))
            await asyncio.sleep(0.1)
            encoder.gate.set()
            assert await waiting == [4, 6]
        await blocker
    finally:
        batcher.shutdown()
    assert timing.queue_s >= 0.1  # behind the held batch
    assert 0.05 <= timing.inference_s < timing.queue_s + 1.0


async def test_a_failing_batch_observer_does_not_stop_the_batcher() -> None:
    def broken(_: BatchRun) -> None:
        raise RuntimeError("observer bug")

    batcher: MicroBatcher[int, int] = MicroBatcher(
        SlowDoubler(0.0), lambda _: 1, MicroBatchConfig(max_wait_ms=0), on_batch=broken
    )
    try:
        assert await batcher.submit([1]) == [2]
        assert await batcher.submit([2]) == [4] and batcher.is_alive
    finally:
        batcher.shutdown()
