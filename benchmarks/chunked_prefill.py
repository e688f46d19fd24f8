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

The parts: ``chunked_prefill_workload`` (prompts, configurations, engines), ``chunked_prefill_run`` (one
run and its window) and ``chunked_prefill_report`` (percentiles, the table); this script parses the options
and alternates the runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.chunked_prefill_report import format_table, summarize
from benchmarks.chunked_prefill_run import run_once
from benchmarks.chunked_prefill_workload import (
    Workload,
    engine_for,
    long_prompt,
    scheduler_configs,
    stream_max_tokens,
    stream_prompts,
)
from benchmarks.offline_engine import rotation
from benchmarks.workload import default_corpus
from shared_engine.llm_engine import LLMEngine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chat = configured_chat_model(args.device, args.dtype)
    device, dtype, tokenizer = chat.device, chat.dtype, chat.tokenizer
    model = chat.build()
    loadavg_before = os.getloadavg()

    streams = stream_prompts(tokenizer, args.streams, args.stream_prompt_len)
    long_ids = long_prompt(tokenizer, args.long_prompt_len)
    if len(long_ids) != args.long_prompt_len:
        raise RuntimeError(f"long prompt has {len(long_ids)} tokens, not {args.long_prompt_len}")
    work = Workload(streams, long_ids, args.warmup_tokens, args.after_tokens)

    scheds = scheduler_configs(args.streams, args.chunk_budget, args.unchunked_budget)
    stream_max = {name: stream_max_tokens(work, sched) for name, sched in scheds.items()}
    engines: dict[str, LLMEngine] = {
        name: engine_for(model, tokenizer, device, dtype, sched, work, stream_max[name])
        for name, sched in scheds.items()
    }
    runs = alternate(engines, work, stream_max, args.warmup_runs, args.repeats)
    payload = {
        **report.run_header("chunked_prefill", chat.spec.name, device, dtype, loadavg_before),
        "repeats": args.repeats,
        "warmup_runs": args.warmup_runs,
        "workload": {
            "streams": args.streams,
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
            for name in engines
        },
    }
    print()
    print(format_table(payload))
    print(f"results: {report.write_results(payload, name='chunked-prefill')}")
    return 0


def alternate(
    engines: dict[str, LLMEngine], work: Workload, stream_max: dict[str, int], warmup_runs: int, repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """``warmup_runs`` unrecorded runs of each configuration, then ``repeats`` recorded ones, the order of
    the configurations rotating; progress on stdout."""
    names = list(engines)
    for w in range(warmup_runs):
        for name in names:
            run_once(engines[name], f"warmup{w}", work, stream_max[name])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotation(names, r):
            runs[name].append(run_once(engines[name], f"run{r}", work, stream_max[name]))
            last = runs[name][-1]
            print(
                f"run {r + 1}/{repeats} {name}: long TTFT {last['long_ttft_ms']:,.1f} ms, "
                f"{last['prefill_steps']} prefill steps, max stream ITL {max(last['itl_ms']):,.1f} ms",
                flush=True,
            )
    return runs


if __name__ == "__main__":
    sys.exit(main())
