"""Serving benchmark in the manner of ``vllm bench serve``: our server against naive transformers.

One run starts ``python -m services.serve`` (or targets ``--url``), drives a fixed workload of streamed
chat requests through it at each ``--concurrency`` level, stops it, then serves the same workload
naively (plain ``model.generate``, one request at a time) in this process, prints a table and writes
``benchmarks/results/serving-<UTC timestamp>.json`` plus ``serving-latest.json``.

    .venv/bin/python benchmarks/serving.py --concurrency 1,8,32 --output-len 128
"""

from __future__ import annotations

import argparse
import secrets
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoTokenizer

from benchmarks import baseline, load, report, server
from benchmarks.metrics import summarize
from benchmarks.workload import Prompt, build_prompts, corpus_words, default_corpus

DEFAULT_MODEL = "smollm2-135m-instruct"
SPEEDUP_AT = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", help="benchmark an already running server at this base URL instead")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name, as in models.toml")
    p.add_argument("--model-path", type=Path, help="its Hugging Face folder (default: services.prepare's)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels of requests in flight")
    p.add_argument("--num-prompts", type=int, help="requests per level (default: max(min, 2 x level))")
    p.add_argument("--min-prompts", type=int, default=8, help="lower bound of the default --num-prompts")
    p.add_argument("--input-len", type=int, default=40, help="tokens in each user message")
    p.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    p.add_argument("--seed", type=int, default=0, help="workload seed; request i samples with seed+i")
    p.add_argument("--baseline-requests", type=int, default=8, help="naive baseline requests (0: skip)")
    p.add_argument("--corpus", type=Path, default=default_corpus(), help="text the prompts come from")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for GET /ready")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency needs positive integers")
    return args


def num_prompts(args: argparse.Namespace, concurrency: int) -> int:
    return args.num_prompts or max(args.min_prompts, 2 * concurrency)


def server_context(args: argparse.Namespace) -> AbstractContextManager[server.Server]:
    if args.url:
        return server.remote_server(args.url.rstrip("/"), args.ready_timeout)
    return server.local_server(args.ready_timeout)


def run_server_levels(args: argparse.Namespace, make_prompts: Any) -> list[dict[str, Any]]:
    summaries = []
    with server_context(args) as srv:
        load.warm_up(srv.url, args.model, make_prompts(1, "warmup")[0])
        for c in args.levels:
            prompts: list[Prompt] = make_prompts(num_prompts(args, c), f"c{c}")
            log(f"level c={c}: {len(prompts)} requests x {args.output_len} tokens ...")
            summary = summarize(load.run_level(srv, args.model, prompts, c, args.output_len), args.output_len)
            log(f"  {summary['output_tok_s']} tok/s, {summary['failed']} failed, cpu {summary['cpu_cores']}")
            summaries.append(summary)
    return summaries


def run_naive(args: argparse.Namespace, folder: Path, make_prompts: Any) -> dict[str, Any] | None:
    if args.baseline_requests <= 0:
        return None
    log(f"naive baseline: {args.baseline_requests} requests, one at a time ...")
    run = baseline.run_baseline(folder, make_prompts(args.baseline_requests, "baseline"), args.output_len)
    summary = summarize(run, args.output_len)
    log(f"  {summary['output_tok_s']} tok/s")
    return summary


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.model_path or server.resolve_model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = corpus_words(args.corpus)
    nonce = secrets.token_hex(4)  # new prefixes every run: a warm --url server cannot reuse its cache

    def make_prompts(count: int, tag: str) -> list[Prompt]:
        return build_prompts(words, tokenizer, count, args.input_len, args.seed, f"{nonce}:{tag}")

    started = datetime.now(UTC)
    levels = run_server_levels(args, make_prompts)  # our server is stopped before the baseline starts
    naive = run_naive(args, folder, make_prompts)
    device = baseline.server_device()
    speedup = report.speedup(levels, naive, SPEEDUP_AT)
    payload = {
        "benchmark": "serving",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": report.machine_info(device, baseline.server_dtype(device)),
        "model": args.model,
        "model_path": str(folder),
        "server": args.url or "spawned: python -m services.serve",
        "input_len": args.input_len,
        "output_len": args.output_len,
        "seed": args.seed,
        "prefix_nonce": nonce,
        "corpus": str(args.corpus),
        "levels": levels,
        "baseline": naive,
        "speedup": speedup,
        f"ours_tok_s_at_{SPEEDUP_AT}_over_naive_tok_s": speedup["ratio"] if speedup else None,
    }
    print(report.format_table(payload))
    path = report.write_results(payload, args.results_dir)
    print(f"\nresults: {path} (copy: {path.with_name('serving-latest.json')})")
    failed = sum(lv["failed"] for lv in levels)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
