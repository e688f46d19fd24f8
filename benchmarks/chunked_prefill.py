"""Inter-token latency of running streams while a long prompt arrives, with and without chunked prefill.

One ``LLMEngine`` per configuration (the same chat model, loaded once, as benchmarks/quantization.py
loads it), driven by ``step()`` in this process. ``--streams`` requests with short prompts decode
greedily (``ignore_eos``); once every one of them has ``--warmup-tokens`` tokens, one request with a
prompt of exactly ``--long-prompt-len`` tokens of real text (Python's LICENSE.txt, repeated) arrives,
asking for ``--after-tokens`` + 1 tokens. The window runs from its arrival until it finishes, i.e. its
prefill, its first token and ``--after-tokens`` more steps; then the streams are aborted.

Measured per run: each stream's gaps between consecutive tokens (wall clock right after the
``step()`` that produced them) in the window, and the long request's TTFT (arrival to its first token).
Two configurations, alternating over ``--repeats`` runs (the order rotating), all samples kept:

- ``chunked``: ``enable_chunked_prefill=True``, ``max_num_batched_tokens=--chunk-budget`` (256): the
  prompt is prefilled in chunks of what is left of the budget after the streams' decodes.
- ``unchunked``: ``enable_chunked_prefill=False``, ``max_num_batched_tokens=--unchunked-budget`` (4096),
  so the whole prompt goes in one step beside the decodes.

(The engine's default budget, 2048, would fit a 2,000-token prompt in one chunk: hence the explicit
budget.) Prefix caching is off, so no run reuses another's prompt.

    .venv/bin/python benchmarks/chunked_prefill.py [--streams 8] [--long-prompt-len 2000]
        [--chunk-budget 256] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.noise import CpuMeter
from benchmarks.workload import build_prompts, corpus_words, default_corpus
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.sampling_params import SamplingParams

BLOCK_SIZE = 16
LONG = "long"
MAX_STEPS = 100_000  # a run that needs more steps than this is stuck


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens, temperature=0.0, ignore_eos=True)


def long_prompt(tokenizer: Any, length: int) -> list[int]:
    """Exactly ``length`` tokens of the corpus, repeated as often as needed."""
    text = default_corpus().read_text(encoding="utf-8")
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    copies = math.ceil(length / len(ids))
    if copies > 1:
        ids = tokenizer.encode("\n\n".join([text] * copies), add_special_tokens=False)
    return ids[:length]


def prefill_steps(long_len: int, budget: int, streams: int) -> int:
    """Steps the long prompt needs when every step also carries the streams' decodes."""
    return math.ceil(long_len / (budget - streams))


def make_engine(
    model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, sched: SchedulerConfig, blocks: int
) -> LLMEngine:
    cache = CacheConfig(block_size=BLOCK_SIZE, num_blocks=blocks, enable_prefix_caching=False)
    config = EngineConfig(cache=cache, scheduler=sched)
    return LLMEngine(model, tokenizer, config, device, dtype, frozenset())


def run_once(
    engine: LLMEngine,
    tag: str,
    streams: list[list[int]],
    long_ids: list[int],
    warmup_tokens: int,
    after_tokens: int,
    stream_max_tokens: int,
) -> dict[str, Any]:
    """One run: the streams to ``warmup_tokens`` each, then the long prompt, to its end."""
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests left from an earlier run")
    meter = CpuMeter([os.getpid()])
    ids = [f"{tag}-s{i}" for i in range(len(streams))]
    long_id = f"{tag}-{LONG}"
    times: dict[str, list[float]] = {rid: [] for rid in [*ids, long_id]}
    steps: list[tuple[float, float, int, int]] = []  # start, end, sequences, tokens
    finished: set[str] = set()

    def step() -> None:
        if len(steps) >= MAX_STEPS:
            raise RuntimeError(f"no end after {MAX_STEPS} steps")
        start = time.perf_counter()
        outs = engine.step()
        end = time.perf_counter()
        stats = engine.stats()
        steps.append((start, end, stats.last_batch_size, stats.last_batch_tokens))
        for out in outs:
            times[out.request_id].extend([end] * len(out.token_ids))
            if out.finished:
                finished.add(out.request_id)

    for rid, prompt in zip(ids, streams, strict=True):
        engine.add_request(rid, prompt, greedy(stream_max_tokens))
    while min(len(times[rid]) for rid in ids) < warmup_tokens:
        step()
    all_decoding = max(times[rid][0] for rid in ids)
    arrival = time.perf_counter()
    engine.add_request(long_id, long_ids, greedy(after_tokens + 1))
    while long_id not in finished:
        step()
    end = time.perf_counter()
    for rid in ids:
        engine.abort_request(rid)
    other_cores = meter.read()["other_cores"]

    window: list[float] = []
    steady: list[float] = []
    for rid in ids:
        t = times[rid]
        for prev, cur in itertools.pairwise(t):
            if cur > arrival:
                window.append(cur - prev)
            elif prev >= all_decoding:
                steady.append(cur - prev)
    first_token = times[long_id][0]
    window_steps = [s for s in steps if s[0] >= arrival]
    prefill = [s for s in window_steps if s[1] <= first_token]
    return {
        "long_ttft_ms": round((first_token - arrival) * 1e3, 3),
        "long_itl_ms": [round((b - a) * 1e3, 3) for a, b in itertools.pairwise(times[long_id])],
        "window_s": round(end - arrival, 3),
        "prefill_steps": len(prefill),
        "prefill_step_tokens": [s[3] for s in prefill],
        "window_step_ms": [round((s[1] - s[0]) * 1e3, 3) for s in window_steps],
        "window_step_tokens": [s[3] for s in window_steps],
        "streams_finished_early": sum(1 for rid in ids if rid in finished),
        "itl_ms": [round(g * 1e3, 3) for g in window],
        "steady_itl_ms": [round(g * 1e3, 3) for g in steady],
        "other_cores": other_cores,
    }


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [g for r in runs for g in r["itl_ms"]]
    steady = [g for r in runs for g in r["steady_itl_ms"]]
    ttfts = [r["long_ttft_ms"] for r in runs]
    others = [r["other_cores"] for r in runs if r["other_cores"] is not None]
    return {
        "itl_samples": len(gaps),
        "itl_p50_ms": pct(gaps, 50),
        "itl_p99_ms": pct(gaps, 99),
        "itl_max_ms": round(max(gaps), 3) if gaps else None,
        "itl_mean_ms": round(statistics.fmean(gaps), 3) if gaps else None,
        "steady_itl_p50_ms": pct(steady, 50),
        "long_ttft_ms_median": round(statistics.median(ttfts), 3),
        "long_ttft_ms_runs": ttfts,
        "prefill_steps_runs": [r["prefill_steps"] for r in runs],
        "max_step_tokens": max(max(r["window_step_tokens"]) for r in runs),
        "other_cores": round(statistics.median(others), 2) if others else None,
    }


def format_table(payload: dict[str, Any]) -> str:
    head = [
        "config", "budget", "prefill steps", "max step tok", "long TTFT ms", "ITL p50", "ITL p99",
        "ITL max", "steady p50", "gaps",
    ]  # fmt: skip
    rows = [head]
    for name, res in payload["configs"].items():
        s = res["summary"]
        steps = "/".join(str(x) for x in sorted(set(s["prefill_steps_runs"])))
        rows.append(
            [
                name,
                str(res["max_num_batched_tokens"]),
                steps,
                str(s["max_step_tokens"]),
                f"{s['long_ttft_ms_median']:,.1f}",
                *(f"{s[k]:,.1f}" for k in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms", "steady_itl_p50_ms")),
                str(s["itl_samples"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    m = payload["machine"]
    w = payload["workload"]
    return "\n".join(
        [
            f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, {m['torch_threads']} torch "
            f"threads, torch {m['torch_version']}, {m['dtype']}, {m['device']}"
            + (f" ({m['gpu']})" if m["gpu"] else ""),
            f"{w['streams']} streams (prompts ~{w['stream_prompt_len']} tok, greedy) decoding; after "
            f"{w['warmup_tokens']} tokens each a {w['long_prompt_len']}-token prompt arrives "
            f"(max_tokens {w['after_tokens'] + 1}); {payload['repeats']} runs per config",
            f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}",
            "",
            *lines,
            "",
            "ITL (ms): the streams' gaps between consecutive tokens from the long prompt's arrival to its "
            "last token, all runs pooled;",
            "steady p50: their gaps before it arrived. long TTFT: median over runs, arrival to first token.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=8, help="running streams")
    p.add_argument("--stream-prompt-len", type=int, default=32, help="tokens of each stream's prompt")
    p.add_argument("--warmup-tokens", type=int, default=16, help="tokens per stream before the long prompt")
    p.add_argument("--long-prompt-len", type=int, default=2000)
    p.add_argument("--after-tokens", type=int, default=16, help="long request's tokens after its first")
    p.add_argument("--chunk-budget", type=int, default=256, help="max_num_batched_tokens, chunked")
    p.add_argument("--unchunked-budget", type=int, default=4096, help="max_num_batched_tokens, unchunked")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per config")
    p.add_argument("--warmup-runs", type=int, default=1, help="unrecorded runs per config first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="default: the model's configured device (auto)")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.streams
    if n < 1 or args.repeats < 1 or args.long_prompt_len < 1:
        p.error("--streams, --repeats and --long-prompt-len must be >= 1")
    if args.chunk_budget <= n:
        p.error(f"--chunk-budget must exceed --streams ({n}): the decodes alone would fill it")
    if args.unchunked_budget < args.long_prompt_len + n:
        p.error(
            f"--unchunked-budget must be >= --long-prompt-len + --streams ({args.long_prompt_len + n}): "
            "without chunking a longer prompt waits until the streams end"
        )

    chat = configured_chat_model(args.device, args.dtype)
    spec, device, dtype, tokenizer = chat.spec, chat.device, chat.dtype, chat.tokenizer
    model = chat.build()
    loadavg_before = os.getloadavg()

    words = corpus_words(default_corpus())
    streams = [
        tokenizer.encode(pr.text, add_special_tokens=False)
        for pr in build_prompts(
            words, tokenizer, n, args.stream_prompt_len, seed=0, prefix_tag="chunked-prefill"
        )
    ]
    long_ids = long_prompt(tokenizer, args.long_prompt_len)
    if len(long_ids) != args.long_prompt_len:
        raise RuntimeError(f"long prompt has {len(long_ids)} tokens, not {args.long_prompt_len}")

    scheds = {
        "chunked": SchedulerConfig(
            max_num_seqs=max(64, n + 1),
            max_num_batched_tokens=args.chunk_budget,
            enable_chunked_prefill=True,
        ),
        "unchunked": SchedulerConfig(
            max_num_seqs=max(64, n + 1),
            max_num_batched_tokens=args.unchunked_budget,
            enable_chunked_prefill=False,
        ),
    }
    engines: dict[str, LLMEngine] = {}
    stream_max: dict[str, int] = {}
    for name, sched in scheds.items():
        # Enough tokens that no stream ends inside the window (the prompts' own prefill may take a step
        # or two more), and enough KV blocks for all of it at once: no preemption.
        stream_max[name] = (
            args.warmup_tokens + prefill_steps(args.long_prompt_len, sched.max_num_batched_tokens, n)
            + args.after_tokens + 16
        )  # fmt: skip
        blocks = sum(math.ceil((len(s) + stream_max[name]) / BLOCK_SIZE) for s in streams)
        blocks += math.ceil((args.long_prompt_len + args.after_tokens + 1) / BLOCK_SIZE) + n + 4
        engines[name] = make_engine(model, tokenizer, device, dtype, sched, blocks)

    def run(name: str, tag: str) -> dict[str, Any]:
        return run_once(
            engines[name], tag, streams, long_ids, args.warmup_tokens, args.after_tokens, stream_max[name]
        )

    names = list(engines)
    for w in range(args.warmup_runs):
        for name in names:
            run(name, f"warmup{w}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runs[name].append(run(name, f"run{r}"))
            last = runs[name][-1]
            print(
                f"run {r + 1}/{args.repeats} {name}: long TTFT {last['long_ttft_ms']:,.1f} ms, "
                f"{last['prefill_steps']} prefill steps, max stream ITL {max(last['itl_ms']):,.1f} ms",
                flush=True,
            )
    payload = {
        **report.run_header("chunked_prefill", spec.name, device, dtype, loadavg_before),
        "repeats": args.repeats,
        "warmup_runs": args.warmup_runs,
        "workload": {
            "streams": n,
            "stream_prompt_len": args.stream_prompt_len,
            "stream_prompt_tokens": [len(s) for s in streams],
            "warmup_tokens": args.warmup_tokens,
            "long_prompt_len": args.long_prompt_len,
            "after_tokens": args.after_tokens,
            "long_prompt_text": f"{default_corpus()} (repeated, cut to {args.long_prompt_len} tokens)",
            "sampling": "greedy, ignore_eos",
        },
        "configs": {
            name: {
                "enable_chunked_prefill": scheds[name].enable_chunked_prefill,
                "max_num_batched_tokens": scheds[name].max_num_batched_tokens,
                "stream_max_tokens": stream_max[name],
                "kv_blocks": engines[name].stats().num_blocks,
                "summary": summarize(runs[name]),
                "runs": runs[name],
            }
            for name in names
        },
    }
    print()
    print(format_table(payload))
    print(f"results: {report.write_results(payload, name='chunked-prefill')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
