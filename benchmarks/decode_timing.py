"""Pure-decode speed of an ``LLMEngine``: a batch of requests at once, timed from the step that gives the
last of them its first token to the end, with the CPU that other processes took meanwhile."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from benchmarks.noise import CpuMeter
from benchmarks.offline_engine import greedy
from shared_engine.llm_engine import LLMEngine


@dataclass(frozen=True)
class DecodeTiming:
    decode_tok_s: float  # tokens generated after every request had its first one, per second since then
    step_ms: float  # mean wall time of those steps
    decode_steps: int
    decode_tokens: int
    prefill_s: float  # from the first step to the one that gave the last request its first token
    cpu: dict[str, float | None]  # benchmarks.noise.CpuMeter over the whole run
    token_ids: list[list[int]]  # generated, per request, in the order of the prompts


def time_decode(engine: LLMEngine, tag: str, prompts: list[list[int]], output_len: int) -> DecodeTiming:
    """Add one greedy request of ``output_len`` tokens per prompt (ids ``<tag>-<i>``), step the engine
    until all end; raise when no step was pure decode (``output_len`` too short)."""
    meter = CpuMeter([os.getpid()])
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, greedy(output_len))
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    started = time.perf_counter()
    decode_start: float | None = None
    decoded = steps = 0
    end = started
    while engine.has_unfinished_requests():
        outs = engine.step()
        end = time.perf_counter()
        for o in outs:
            tokens[o.request_id].extend(o.token_ids)
        if decode_start is not None:
            decoded += sum(len(o.token_ids) for o in outs)
            steps += 1
        elif all(tokens.values()):
            decode_start = end
    if decode_start is None or end <= decode_start:
        raise RuntimeError("no decode steps: raise --output-len")
    return DecodeTiming(
        decode_tok_s=round(decoded / (end - decode_start), 2),
        step_ms=round((end - decode_start) / steps * 1e3, 3),
        decode_steps=steps,
        decode_tokens=decoded,
        prefill_s=round(decode_start - started, 3),
        cpu=meter.read(),
        token_ids=[tokens[rid] for rid in ids],
    )
