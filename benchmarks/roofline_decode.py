"""The engine's side of the roofline: decode tokens/s through ``LLMEngine.step()`` at each batch size,
where that stands against the machine's figures (compute, the model's own matmuls, memory), and a
torch.profiler breakdown of a decode step by operator."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.decode_timing import time_decode
from benchmarks.offline_engine import greedy
from benchmarks.roofline_microbench import MachineFigures
from shared_engine.llm_engine import LLMEngine


def decode_run(engine: LLMEngine, tag: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """All requests at once; tokens/s from the step where the last one got its first token to the end."""
    t = time_decode(engine, tag, prompts, output_len)
    return {
        "decode_tok_s": t.decode_tok_s,
        "decode_tokens": t.decode_tokens,
        "decode_steps": t.decode_steps,
        "step_ms": t.step_ms,
        "prefill_s": t.prefill_s,
        "other_cores": t.cpu["other_cores"],
    }


def decode_runs(
    engine: LLMEngine, batch: int, prompts: list[list[int]], output_len: int, runs: int
) -> list[dict[str, Any]]:
    """``runs`` decode runs of the first ``batch`` prompts; progress on stdout."""
    out = []
    for r in range(runs):
        out.append(decode_run(engine, f"b{batch}-r{r}", prompts[:batch], output_len))
        print(f"batch {batch} run {r + 1}/{runs}: {out[-1]['decode_tok_s']:,.1f} tok/s", flush=True)
    return out


def decode_point(
    batch: int,
    runs: list[dict[str, Any]],
    params: dict[str, int],
    weight_bytes: int,
    machine: MachineFigures,
    dtype_name: str,
) -> dict[str, Any]:
    """Where the median of ``runs`` stands: achieved FLOP/s (2 x params x tokens/s), as a share of the
    compute peak, of the decode-shaped matmul and of the model's own linears at ``batch``, and against
    the memory-bound ceiling (``batch`` x read bandwidth / weight bytes)."""
    tok_s = statistics.median(x["decode_tok_s"] for x in runs)
    achieved = 2 * params["matmul"] * tok_s / 1e9
    mem_bound = batch * machine.bandwidth["read_gb_s"] * 1e9 / weight_bytes
    return {
        "batch": batch,
        "decode_tok_s": round(tok_s, 2),
        "step_ms": round(statistics.median(x["step_ms"] for x in runs), 3),
        "achieved_gflop_s": round(achieved, 2),
        "achieved_gflop_s_non_embedding": round(2 * params["non_embedding"] * tok_s / 1e9, 2),
        "fraction_of_peak": round(achieved / machine.peak_gflop_s(dtype_name), 4),
        "fraction_of_shape_matmul": round(achieved / machine.shape_gflop_s(batch, dtype_name), 4),
        "fraction_of_linears": round(achieved / machine.linears_gflop_s(batch), 4),
        "memory_bound_tok_s": round(mem_bound, 1),
        "fraction_of_memory_bound": round(tok_s / mem_bound, 4),
        "runs": runs,
    }


def profile_decode(
    engine: LLMEngine, prompts: list[list[int]], output_len: int, steps: int, top: int = 15
) -> list[dict[str, Any]]:
    """torch.profiler over ``steps`` pure-decode steps of ``prompts`` at once: the operators that take
    the most time of their own, with their share of the profiled time."""
    from torch.profiler import ProfilerActivity, profile

    params = greedy(output_len)
    for i, ids in enumerate(prompts):
        engine.add_request(f"profile-{i}", ids, params)
    for _ in range(3):  # the prefill and the first decodes
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
    for i in range(len(prompts)):
        engine.abort_request(f"profile-{i}")
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "calls_per_step": round(e.count / steps, 1),
            "self_ms_per_step": round(e.self_cpu_time_total / steps / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in events[:top]
    ]
