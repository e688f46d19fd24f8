"""One run of the chunked-prefill benchmark: the streams decode until each has its warm-up tokens, then
the long prompt arrives and runs to its end; what every step and every token's arrival time say about the
streams' inter-token gaps and the long request's TTFT in that window."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.chunked_prefill_workload import Workload
from benchmarks.noise import CpuMeter
from benchmarks.offline_engine import greedy
from shared_engine.llm_engine import LLMEngine

LONG = "long"
MAX_STEPS = 100_000  # a run that needs more steps than this is stuck


@dataclass
class Trace:
    """Wall-clock times of a run: each request's tokens (right after the step that produced them) and
    each step's start, end, sequences and tokens."""

    times: dict[str, list[float]]
    steps: list[tuple[float, float, int, int]] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)

    def step(self, engine: LLMEngine) -> None:
        if len(self.steps) >= MAX_STEPS:
            raise RuntimeError(f"no end after {MAX_STEPS} steps")
        start = time.perf_counter()
        outs = engine.step()
        end = time.perf_counter()
        stats = engine.stats()
        self.steps.append((start, end, stats.last_batch_size, stats.last_batch_tokens))
        for out in outs:
            self.times[out.request_id].extend([end] * len(out.token_ids))
            if out.finished:
                self.finished.add(out.request_id)


def run_once(engine: LLMEngine, tag: str, work: Workload, stream_max_tokens: int) -> dict[str, Any]:
    """One run: the streams to ``warmup_tokens`` each, then the long prompt, to its end."""
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests left from an earlier run")
    meter = CpuMeter([os.getpid()])
    ids = [f"{tag}-s{i}" for i in range(len(work.streams))]
    long_id = f"{tag}-{LONG}"
    trace = Trace({rid: [] for rid in [*ids, long_id]})
    for rid, prompt in zip(ids, work.streams, strict=True):
        engine.add_request(rid, prompt, greedy(stream_max_tokens))
    while min(len(trace.times[rid]) for rid in ids) < work.warmup_tokens:
        trace.step(engine)
    all_decoding = max(trace.times[rid][0] for rid in ids)
    arrival = time.perf_counter()
    engine.add_request(long_id, work.long_ids, greedy(work.after_tokens + 1))
    while long_id not in trace.finished:
        trace.step(engine)
    end = time.perf_counter()
    for rid in ids:
        engine.abort_request(rid)
    other_cores = meter.read()["other_cores"]
    return {**window_figures(trace, ids, long_id, all_decoding, arrival, end), "other_cores": other_cores}


def window_figures(
    trace: Trace, ids: list[str], long_id: str, all_decoding: float, arrival: float, end: float
) -> dict[str, Any]:
    """The streams' gaps in the window (from the long prompt's ``arrival``) and before it (once all
    decode), the long request's TTFT and inter-token gaps, and the steps of the window."""
    window: list[float] = []
    steady: list[float] = []
    for rid in ids:
        for prev, cur in itertools.pairwise(trace.times[rid]):
            if cur > arrival:
                window.append(cur - prev)
            elif prev >= all_decoding:
                steady.append(cur - prev)
    first_token = trace.times[long_id][0]
    window_steps = [s for s in trace.steps if s[0] >= arrival]
    prefill = [s for s in window_steps if s[1] <= first_token]
    return {
        "long_ttft_ms": round((first_token - arrival) * 1e3, 3),
        "long_itl_ms": [round((b - a) * 1e3, 3) for a, b in itertools.pairwise(trace.times[long_id])],
        "window_s": round(end - arrival, 3),
        "prefill_steps": len(prefill),
        "prefill_step_tokens": [s[3] for s in prefill],
        "window_step_ms": [round((s[1] - s[0]) * 1e3, 3) for s in window_steps],
        "window_step_tokens": [s[3] for s in window_steps],
        "streams_finished_early": sum(1 for rid in ids if rid in trace.finished),
        "itl_ms": [round(g * 1e3, 3) for g in window],
        "steady_itl_ms": [round(g * 1e3, 3) for g in steady],
    }
