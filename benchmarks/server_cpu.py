"""Where a served token's CPU time goes at one stream: the server's threads and the streaming client.

On a machine whose cores the decode step's threads all take, every millisecond another thread or process
runs is one the step waits for (its threads meet at a barrier many times a token; one of them descheduled
holds up the rest), so a served token costs about the step alone plus the CPU time of everything else
spent on that token: the event loop's HTTP and streaming, the engine thread's delivery, the client's
parsing. This starts the server (``python -m services.commands.serve``), streams ``--requests`` chat
completions one at a time, ``--rounds`` times, and reads each thread's CPU time from ``/proc``: the
``--team`` busiest threads are the compute team (they spin between the step's phases, so they are busy
whether or not they compute, and the engine's own Python between kernels is counted with them); the
rest is the server's work beside the step. Also the client's CPU (this process), TPOT p50 and the CPU
other processes took. Per output token: each request's own costs (its prompt, its HTTP exchange) are
spread over its tokens. Linux only.

    .venv/bin/python benchmarks/server_cpu.py [--rounds 3] [--requests 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoTokenizer

from benchmarks import load, report, server
from benchmarks.metrics import summarize
from benchmarks.noise import process_ticks
from benchmarks.workload import build_prompts, corpus_words, default_corpus


def thread_ticks(pid: int) -> dict[int, int]:
    """User + system clock ticks of each thread of ``pid`` (one that ends between two readings is lost
    from the second: the server's threads live as long as it does)."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended
            continue
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a chat model, as in models.toml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=16, help="streamed one at a time per round")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--team", type=int, help="compute threads (default: the server's cores)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for GET /ready")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(server.resolve_model_folder(args.model))
    words = corpus_words(default_corpus())
    ms_per_tick = 1e3 / os.sysconf("SC_CLK_TCK")
    rounds: list[dict[str, Any]] = []
    with server.local_server(args.ready_timeout) as srv:
        assert srv.pid is not None
        team_size = args.team or len(os.sched_getaffinity(srv.pid))
        load.warm_up(srv.url, args.model, build_prompts(words, tokenizer, 1, args.input_len, 0, "warm-up")[0])
        for r in range(args.rounds):
            prompts = build_prompts(words, tokenizer, args.requests, args.input_len, 0, f"{time.time()}:{r}")
            before, client_before = thread_ticks(srv.pid), process_ticks(os.getpid())
            run = load.run_level(srv, args.model, prompts, 1, args.output_len, name=f"round {r}")
            after, client_after = thread_ticks(srv.pid), process_ticks(os.getpid())
            summary = summarize(run, args.output_len, {})
            if summary["failed"] or summary["wrong_output_len"]:
                failed, short = summary["failed"], summary["wrong_output_len"]
                print(f"round {r}: {failed} failed, {short} short: {summary['errors']}", file=sys.stderr)
                return 1
            tokens = summary["total_output_tokens"]
            used = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
            team, rest = used[:team_size], used[team_size:]
            figures = {
                "tpot_p50_ms": summary["tpot_ms"]["p50"],
                "output_tok_s": summary["output_tok_s"],
                "team_ms_per_token": [round(t * ms_per_tick / tokens, 3) for t in team],
                "server_other_ms_per_token": round(sum(rest) * ms_per_tick / tokens, 3),
                "busiest_other_threads_ms_per_token": [round(t * ms_per_tick / tokens, 3) for t in rest[:3]],
                "client_ms_per_token": round((client_after - client_before) * ms_per_tick / tokens, 3),
                "other_processes_cores": summary["cpu_cores"].get("other_cores"),
            }
            print(f"round {r}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
            rounds.append(figures)
    medians = {
        k: round(statistics.median(float(f[k]) for f in rounds), 3)
        for k in ("tpot_p50_ms", "server_other_ms_per_token", "client_ms_per_token")
    }
    http = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")}
    print(f"median of {args.rounds}: {medians} (uvloop/httptools installed: {http})")
    payload = {
        "benchmark": "server_cpu",
        "machine": report.machine_info(torch.device("cpu"), torch.bfloat16),
        "model": args.model,
        "requests_per_round": args.requests,
        "output_len": args.output_len,
        "installed": http,
        "rounds": rounds,
        "medians": medians,
    }
    path = report.write_results(payload, args.results_dir, "server_cpu")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
