"""What the distributed mode costs and gains, in two scenarios:

* ``overhead`` (the default): latency and throughput of the same requests served embedded (one process)
  and through gRPC workers (gateway → one LLM worker, one embedding worker), in one run. Target: gRPC
  adds < 10% to the p50 latency of a 64-token chat completion.
* ``routing``: multi-turn chats on two LLM replicas, round-robin vs cache-aware routing
  (benchmarks/prefix_routing.py): the cached share of each later turn's prompt, and TTFT.

    .venv/bin/python benchmarks/distributed.py [--requests 20] [--concurrency 8]
    .venv/bin/python benchmarks/distributed.py --scenario routing [--chats 6] [--turns 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import torch

from benchmarks import prefix_routing, report, server

TARGET = 0.10
CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "Tell me about the history of Paris."}],
    "max_tokens": 64,
    "temperature": 0,
    "ignore_eos": True,
}
EMBED = {
    "model": "all-minilm-l6-v2",
    "input": "The quick brown fox jumps over the lazy dog near the river bank.",
}


async def timed(
    base_url: str, path: str, body: dict[str, Any], requests: int, concurrency: int
) -> list[float]:
    """Latencies of ``requests`` calls, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        async with gate:
            start = time.perf_counter()
            r = await client.post(path, json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await asyncio.gather(*(one(client) for _ in range(requests)))
    return latencies


def summary(latencies: list[float], busy_s: float, concurrency: int) -> dict[str, Any]:
    latencies = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
        "requests_s": round(len(latencies) / busy_s, 2),
    }


def paired(
    urls: dict[str, str], path: str, body: dict[str, Any], requests: int, concurrency: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """The same load on each server in alternating rounds, so that a machine whose speed drifts
    (other tenants, clocks) slows both modes alike."""
    latencies: dict[str, list[float]] = {mode: [] for mode in urls}
    busy: dict[str, float] = dict.fromkeys(urls, 0.0)
    for url in urls.values():  # warm-up
        asyncio.run(timed(url, path, body, min(concurrency, 4), concurrency))
    for _ in range(rounds):
        for mode, url in urls.items():
            start = time.perf_counter()
            latencies[mode] += asyncio.run(timed(url, path, body, max(1, requests // rounds), concurrency))
            busy[mode] += time.perf_counter() - start
    return {mode: summary(latencies[mode], busy[mode], concurrency) for mode in urls}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--requests", type=int, default=20, help="chat requests per level and mode (embeddings: 10x)"
    )
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, help="alternations between the two servers (default 5; routing: 2)")
    p.add_argument("--scenario", choices=("overhead", "routing"), default="overhead")
    p.add_argument("--chats", type=int, default=6, help="routing: conversations at once")
    p.add_argument("--turns", type=int, default=4, help="routing: turns per conversation")
    p.add_argument("--system-words", type=int, default=300, help="routing: words of each system prompt")
    args = p.parse_args(argv)
    if args.scenario == "routing":
        args.rounds = args.rounds or 2
        return routing(args.chats, args.turns, args.system_words, args.rounds)
    # Both servers up at once (one LLM worker in gRPC mode, so both run one engine), used in turn.
    topology = ("--base-port", "0", "--replicas", "chat=1")
    embedded: dict[str, Any] = {}
    grpc_mode: dict[str, Any] = {}
    topology_server = server.local_server(600, "services.commands.topology", topology)
    with server.local_server(600) as one, topology_server as many:
        urls = {"embedded": one.url, "grpc": many.url}
        for name, path, body, requests in (
            ("chat", "/v1/chat/completions", CHAT, args.requests),
            ("embeddings", "/v1/embeddings", EMBED, args.requests * 10),
        ):
            for c in (1, args.concurrency):
                both = paired(urls, path, body, requests, c, args.rounds or 5)
                embedded.setdefault(name, []).append(both["embedded"])
                grpc_mode.setdefault(name, []).append(both["grpc"])
    overhead = grpc_mode["chat"][0]["p50_ms"] / embedded["chat"][0]["p50_ms"] - 1
    payload = {
        "benchmark": "distributed",
        "machine": report.machine_info(torch.device("cpu"), torch.bfloat16),
        "embedded": embedded,
        "grpc": grpc_mode,
        "chat_p50_overhead": round(overhead, 4),
        "target": TARGET,
        "met": overhead < TARGET,
    }
    for task in ("chat", "embeddings"):
        for e, g in zip(embedded[task], grpc_mode[task], strict=True):
            left = f"embedded p50 {e['p50_ms']:>8} ms {e['requests_s']:>7} req/s"
            right = f"gRPC p50 {g['p50_ms']:>8} ms {g['requests_s']:>7} req/s"
            print(f"{task:<10} c={e['concurrency']:<3} {left} | {right}")
    print(f"gRPC adds {overhead:+.1%} to a 64-token chat completion's p50 (target < {TARGET:.0%})")
    print(f"results: {report.write_results(payload, name='distributed')}")
    return 0


def routing(chats: int, turns: int, words: int, rounds: int) -> int:
    results = prefix_routing.run(chats, turns, words, rounds)
    aware = results["cache_aware"]
    met = aware["cached_share_mean"] >= 0.9 and aware["turns_below_half"] == 0
    payload = {
        "benchmark": "distributed-routing",
        "machine": report.machine_info(torch.device("cpu"), torch.bfloat16),
        "chats": chats,
        "turns": turns,
        "system_words": words,
        "rounds": rounds,
        "policies": results,
        "target": "turns after the first: mean cached share >= 0.9, none below 0.5",
        "met": met,
    }
    for policy, r in results.items():
        cached = f"{r['cached_share_mean']:.1%} mean, {r['cached_share_min']:.1%} min"
        ttft = f"TTFT p50 {r['ttft_p50_ms']} ms p99 {r['ttft_p99_ms']} ms"
        print(f"{policy:<12} later turns cached {cached}, {r['turns_below_half']} below half | {ttft}")
    print(f"target met: {met}")
    print(f"results: {report.write_results(payload, name='distributed-routing')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
