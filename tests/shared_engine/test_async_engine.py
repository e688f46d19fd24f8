"""The asyncio front: many awaiting callers, one engine thread, aborts that free KV blocks."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared_engine.async_engine import AsyncLLMEngine, GenerationRequest
from shared_engine.compute import ComputeLane
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.errors import ContextLengthExceeded, InvalidRequest, Overloaded
from shared_engine.outputs import FinishReason, RequestOutput
from shared_engine.sampling_params import OutputKind, SamplingParams
from tests.helpers.tiny_llm import tiny_engine


@pytest.fixture()
def engine(smollm2_folder: Path) -> Iterator[AsyncLLMEngine]:
    front = AsyncLLMEngine(
        tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128)))
    )
    yield front
    front.shutdown()


async def _wait_idle(front: AsyncLLMEngine) -> None:
    for _ in range(200):
        stats = front.stats()
        if stats.num_running == 0 and stats.num_waiting == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {front.stats()}")


async def test_concurrent_callers_each_get_their_own_stream(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    async def run(i: int) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(f"r{i}", [1, 2, 3, i + 10], params):
            assert out.request_id == f"r{i}"
            tokens.extend(out.token_ids)
        return tokens

    results = await asyncio.gather(*(run(i) for i in range(6)))
    assert all(len(r) == 16 for r in results)
    # The same prompt twice gives the same greedy tokens.
    assert await run(0) == results[0]


async def test_closing_the_stream_aborts_and_frees_blocks(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    stream = engine.generate("long", list(range(1, 40)), params)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]  (what a disconnecting client's handler does)
    await _wait_idle(engine)
    assert engine.stats().kv_cache_usage == 0.0


async def test_an_aborted_request_is_observed_with_its_metrics(smollm2_folder: Path) -> None:
    """A request aborted after its first tokens reaches the step observer outside a step (no seconds),
    with its metrics, so time to first token and end-to-end latency count it too."""
    seen: list[tuple[list[RequestOutput], float | None]] = []
    front = AsyncLLMEngine(
        tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128))),
        on_step=lambda _engine, outputs, step_s: seen.append((outputs, step_s)),
    )
    try:
        stream = front.generate("cut", list(range(1, 20)), SamplingParams(max_tokens=400, ignore_eos=True))
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        await _wait_idle(front)
    finally:
        front.shutdown()
    assert all(step_s is not None and step_s > 0 for _, step_s in seen[:-1])
    (aborted,), step_s = seen[-1]
    assert step_s is None and aborted.finish_reason is FinishReason.ABORT, seen[-1]
    assert aborted.metrics is not None and aborted.metrics.ttft_s is not None
    assert aborted.metrics.num_output_tokens >= 1 and aborted.metrics.e2e_s >= aborted.metrics.ttft_s


async def test_validation_errors_reach_the_caller(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=500, temperature=0)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 512"):
        async for _ in engine.generate("too-long", list(range(1, 100)), params):
            pass
    # The engine keeps serving afterwards.
    outs = [o async for o in engine.generate("ok", [5, 6, 7], SamplingParams(max_tokens=2, temperature=0))]
    assert outs[-1].finished and outs[-1].num_output_tokens == 2


async def _collect(
    engine: AsyncLLMEngine,
    request_id: str,
    params: SamplingParams,
    pause: float = 0.0,
    prompt: list[int] | None = None,
) -> list[RequestOutput]:
    outs: list[RequestOutput] = []
    async for out in engine.generate(request_id, prompt or [3, 1, 4, 1, 5], params):
        outs.append(out)
        await asyncio.sleep(pause)
    return outs


async def test_final_only_delivers_the_whole_completion_once(engine: AsyncLLMEngine) -> None:
    delta = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
    final = dataclasses.replace(delta, output_kind=OutputKind.FINAL_ONLY)
    steps = await _collect(engine, "delta", delta)
    (whole,) = await _collect(engine, "final", final)
    # A delta reader may get several steps joined when it falls behind (see the slow-reader test).
    assert sum(len(o.token_ids) for o in steps) == 12
    assert whole.finished and whole.finish_reason == steps[-1].finish_reason
    assert whole.token_ids == [t for o in steps for t in o.token_ids]
    assert whole.text == "".join(o.text for o in steps)
    assert [lp.token_id for lp in whole.logprobs] == whole.token_ids
    assert whole.num_output_tokens == 12 and whole.num_prompt_tokens == 5


async def test_a_slow_reader_gets_queued_increments_joined(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    fast = await _collect(engine, "fast", params)
    slow = await _collect(engine, "slow", params, pause=0.1)
    assert len(fast) > len(slow)  # the engine ran ahead of the slow reader; nothing was lost
    assert [t for o in slow for t in o.token_ids] == [t for o in fast for t in o.token_ids]
    assert "".join(o.text for o in slow) == "".join(o.text for o in fast)
    assert slow[-1].finished and sum(o.finished for o in slow) == 1


async def test_engine_steps_run_on_the_given_lane(engine: AsyncLLMEngine) -> None:
    lane = ComputeLane("step-lane")
    threads: set[str] = set()
    step = engine.engine.step

    def recorded_step() -> list[RequestOutput]:
        threads.add(threading.current_thread().name)
        return step()

    front = AsyncLLMEngine(engine.engine, lane=lane)
    engine.engine.step = recorded_step  # type: ignore[method-assign]
    try:
        outs = await _collect(front, "on-lane", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    finally:
        front.shutdown()
    assert outs[-1].num_output_tokens == 3 and threads == {"step-lane"}


async def test_past_the_waiting_limits_requests_are_refused_and_admitted_ones_finish(
    smollm2_folder: Path,
) -> None:
    limits = SchedulerConfig(max_num_seqs=2, max_waiting_requests=3, max_waiting_tokens=10_000)
    config = EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128), scheduler=limits)
    front = AsyncLLMEngine(tiny_engine(smollm2_folder, config))
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def run(i: int) -> int | Overloaded:
        try:
            return len(await _collect(front, f"r{i}", params))
        except Overloaded as exc:
            return exc

    try:
        results = await asyncio.gather(*(run(i) for i in range(12)))
    finally:
        front.shutdown()
    refused = [r for r in results if isinstance(r, Overloaded)]
    done = [r for r in results if not isinstance(r, Overloaded)]
    # The first adds reach the engine thread before any step: 3 wait; later ones queue while 2 run.
    assert refused and len(done) >= 3, results
    assert all(n >= 1 for n in done)
    assert all(r.retry_after_s >= 1 and "max_waiting_requests=3" in str(r) for r in refused)


async def test_a_prompt_past_the_waiting_token_budget_is_refused(smollm2_folder: Path) -> None:
    """Past what even an empty queue takes: the caller's mistake (400), not a busy server (429)."""
    limits = SchedulerConfig(max_waiting_tokens=8)
    front = AsyncLLMEngine(tiny_engine(smollm2_folder, EngineConfig(scheduler=limits)))
    one_token = SamplingParams(max_tokens=1, temperature=0)
    try:
        with pytest.raises(InvalidRequest, match=r"hold 19 tokens .* at most 8 \(max_waiting_tokens\)"):
            await _collect(front, "big", one_token, prompt=list(range(1, 20)))
        assert len(await _collect(front, "small", one_token)) == 1
    finally:
        front.shutdown()


def _group(params: SamplingParams, *prompts: list[int]) -> list[GenerationRequest]:
    return [GenerationRequest(f"g{i}", p, params) for i, p in enumerate(prompts)]


async def test_a_group_larger_than_the_waiting_limit_is_admitted_as_a_whole(smollm2_folder: Path) -> None:
    """The n choices of a completion are one admission: they never fill the queue against themselves."""
    limits = SchedulerConfig(max_num_seqs=2, max_waiting_requests=3)
    front = AsyncLLMEngine(tiny_engine(smollm2_folder, EngineConfig(scheduler=limits)))
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    try:
        outputs = [out async for _, out in front.generate_group(_group(params, *[[1, 2, 3]] * 8))]
    finally:
        front.shutdown()
    assert sorted(out.request_id for out in outputs if out.finished) == [f"g{i}" for i in range(8)]


async def test_a_group_is_scheduled_together_while_the_engine_is_busy(smollm2_folder: Path) -> None:
    steps: list[set[str]] = []
    front = AsyncLLMEngine(
        tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128))),
        on_step=lambda _engine, outputs, _s: steps.append({o.request_id for o in outputs}),
    )
    long = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
    short = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=1)
    try:
        busy = front.generate("busy", [7, 8, 9], long)
        await anext(busy)  # the step loop is running when the group arrives
        tokens: dict[int, list[int]] = {0: [], 1: [], 2: []}
        async for index, out in front.generate_group(_group(short, [1, 2], [3, 4, 5], [6] * 9)):
            assert out.request_id == f"g{index}"
            tokens[index].extend(out.token_ids)
        await busy.aclose()  # type: ignore[attr-defined]
    finally:
        front.shutdown()
    assert all(len(t) == 6 for t in tokens.values())
    group = {"g0", "g1", "g2"}
    first = next(s for s in steps if s & group)
    assert group <= first, steps  # the three prompts were computed in one step
    assert "busy" in first


async def test_a_group_with_one_refused_request_adds_none(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=500, temperature=0)
    with pytest.raises(ContextLengthExceeded):
        async for _ in engine.generate_group(_group(params, [1, 2, 3], list(range(1, 100)))):
            pass
    stats = engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_cache_usage == 0.0


async def test_closing_a_group_aborts_every_request(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    outputs = engine.generate_group(_group(params, list(range(1, 30)), list(range(2, 40))))
    seen: set[int] = set()
    async for index, _ in outputs:
        seen.add(index)
        if seen == {0, 1}:
            break
    await outputs.aclose()
    await _wait_idle(engine)
    assert engine.stats().kv_cache_usage == 0.0


def test_max_model_len_is_no_longer_than_the_kv_cache_holds(smollm2_folder: Path) -> None:
    """A KV cache of 4 blocks of 8 tokens holds 32: past that every request would be refused for want of
    blocks (blaming max_tokens), so that is the context length served and reported."""
    small = tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=4)))
    assert small.max_model_len == 32
    params = SamplingParams(max_tokens=8, temperature=0)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 32"):
        small.add_request("long", list(range(1, 26)), params)
    small.add_request("fits", list(range(1, 25)), params)
    roomy = tiny_engine(smollm2_folder, EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128)))
    assert roomy.max_model_len == 512  # the model's positions
