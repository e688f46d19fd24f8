"""Soak under overload: the server is measured for what it can serve (a short closed-loop run), then
driven for N minutes by open-loop Poisson arrivals at a multiple of that rate (default 4x), a mix of
short chat completions and one-sentence embeddings. Reports the statuses (only 200 and 429 are
acceptable: no 5xx, no timeouts), latency percentiles of each, the server's resident memory over the
run and its peak.

    .venv/bin/python benchmarks/soak.py [--minutes 3] [--overload 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import torch

from benchmarks import report, server

CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
    "max_tokens": 32,
    "temperature": 0,
    "ignore_eos": True,
}
EMBED = {"model": "all-minilm-l6-v2", "input": "Soak testing keeps a service honest under load."}
CHAT_SHARE = 0.5


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def one(client: httpx.AsyncClient, chat: bool) -> tuple[str, int, float, str | None]:
    kind = "chat" if chat else "embeddings"
    start = time.perf_counter()
    try:
        r = await client.post(
            f"/v1/{'chat/completions' if chat else 'embeddings'}", json=CHAT if chat else EMBED
        )
        status, retry = r.status_code, r.headers.get("retry-after")
    except httpx.HTTPError as exc:
        status, retry = 0, type(exc).__name__
    return kind, status, time.perf_counter() - start, retry


async def capacity(url: str, seconds: float, concurrency: int) -> float:
    """Requests/s the server completes with ``concurrency`` clients always waiting (the same mix)."""
    done = 0
    stop = time.monotonic() + seconds
    rng = random.Random(1)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop:
            _, status, _, _ = await one(client, rng.random() < CHAT_SHARE)
            done += status == 200

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def soak(url: str, pid: int, rate: float, seconds: float) -> dict[str, Any]:
    rng = random.Random(0)
    results: list[tuple[str, int, float, str | None]] = []
    memory: list[tuple[float, float]] = []
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def record(chat: bool) -> None:
            results.append(await one(client, chat))

        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < seconds:
            if now >= next_sample:
                memory.append((round(now - start, 1), rss_mb(pid)[0]))
                next_sample += 5
            task = asyncio.create_task(record(rng.random() < CHAT_SHARE))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return {"results": results, "memory": memory, "peak_rss_mb": round(rss_mb(pid)[1], 1)}


def summarize(results: list[tuple[str, int, float, str | None]], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("chat", "embeddings"):
        mine = [r for r in results if r[0] == kind]
        by_status: dict[str, Any] = {}
        for status, count in sorted(Counter(r[1] for r in mine).items()):
            latencies = sorted(r[2] for r in mine if r[1] == status)
            by_status[str(status)] = {
                "count": count,
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p99_ms": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
            }
        ok = sum(1 for r in mine if r[1] == 200)
        out[kind] = {"by_status": by_status, "ok_per_s": round(ok / seconds, 2)}
    retry_after = sorted({r[3] for r in results if r[1] == 429 and r[3] is not None})
    out["retry_after_values"] = retry_after[:10]
    out["errors"] = sum(1 for r in results if r[1] not in (200, 429))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=3.0, help="length of the overload phase")
    p.add_argument("--overload", type=float, default=4.0, help="arrival rate as a multiple of capacity")
    p.add_argument("--calibrate-seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=32, help="clients while measuring capacity")
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    with server.local_server(600) as srv:
        assert srv.pid is not None
        rss_before = rss_mb(srv.pid)[0]
        served = asyncio.run(capacity(srv.url, args.calibrate_seconds, args.concurrency))
        rate = served * args.overload
        print(f"capacity {served:.1f} req/s; soaking at {rate:.1f} req/s for {seconds:.0f} s", flush=True)
        run = asyncio.run(soak(srv.url, srv.pid, rate, seconds))
        alive = httpx.get(f"{srv.url}/ready", timeout=10).status_code
    summary = summarize(run["results"], seconds)
    payload = {
        "benchmark": "soak",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "capacity_req_s": round(served, 2),
        "arrival_rate_req_s": round(rate, 2),
        "seconds": seconds,
        "requests": len(run["results"]),
        **summary,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_over_time": run["memory"],
        "peak_rss_mb": run["peak_rss_mb"],
        "ready_after": alive,
    }
    for kind in ("chat", "embeddings"):
        for status, s in summary[kind]["by_status"].items():
            print(f"{kind:<10} {status}: {s['count']:>6}  p50 {s['p50_ms']:>9} ms  p99 {s['p99_ms']:>9} ms")
    print(f"non-200/429 responses: {summary['errors']}; peak RSS {run['peak_rss_mb']} MiB "
          f"(before: {rss_before:.0f} MiB); /ready after: {alive}")  # fmt: skip
    print(f"results: {report.write_results(payload, name='soak')}")
    return 0 if summary["errors"] == 0 and alive == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
