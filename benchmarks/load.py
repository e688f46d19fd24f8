"""The client side: streamed chat requests with bounded concurrency, timed at the client."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import httpx

from benchmarks.metrics import RequestResult, RunResult
from benchmarks.noise import CpuMeter
from benchmarks.server import Server
from benchmarks.workload import Prompt

REQUEST_TIMEOUT_S = 1800.0


def request_body(
    model: str, prompt: Prompt, output_len: int, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The streamed chat request; ``overrides`` replace or add fields a peer server needs."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt.text}],
        "max_tokens": output_len,
        "temperature": 1.0,
        "seed": prompt.seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(overrides or {}),
    }


def arrival_times(count: int, request_rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: all at once for an infinite rate, else a
    Poisson process (exponential gaps with mean 1 / rate), the same for the same seed."""
    if math.isinf(request_rate):
        return [0.0] * count
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(request_rate)
    return times


def _has_content(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


async def _read_stream(response: httpx.Response, start: float) -> RequestResult:
    result = RequestResult(ok=True)
    last = 0.0
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        now = time.perf_counter()
        chunk = json.loads(data)
        if "error" in chunk:
            return RequestResult(ok=False, error=f"stream error: {chunk['error']}")
        if _has_content(chunk):
            if result.ttft == 0.0:
                result.ttft = now - start
            else:
                result.itl.append(now - last)
            last = now
        if usage := chunk.get("usage"):
            result.output_tokens = int(usage["completion_tokens"])
            result.prompt_tokens = int(usage["prompt_tokens"])
    result.e2e = time.perf_counter() - start
    if result.output_tokens == 0:
        return RequestResult(ok=False, error="stream ended without a usage chunk")
    return result


async def send_request(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    prompt: Prompt,
    output_len: int,
    overrides: Mapping[str, Any] | None = None,
) -> RequestResult:
    body = request_body(model, prompt, output_len, overrides)
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(ok=False, error=f"HTTP {response.status_code}: {text[:300]}")
            return await _read_stream(response, start)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        return RequestResult(ok=False, error=f"{type(exc).__name__}: {exc}")


async def _run_level(
    base_url: str,
    model: str,
    prompts: list[Prompt],
    concurrency: int,
    output_len: int,
    request_rate: float,
    seed: int,
    overrides: Mapping[str, Any] | None,
) -> tuple[list[RequestResult], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    arrivals = arrival_times(len(prompts), request_rate, seed)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        start = time.perf_counter()

        async def bounded(prompt: Prompt, at: float) -> RequestResult:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            async with semaphore:
                return await send_request(client, base_url, model, prompt, output_len, overrides)

        results = await asyncio.gather(*(bounded(p, at) for p, at in zip(prompts, arrivals, strict=True)))
        wall = time.perf_counter() - start
    return list(results), wall


def run_level(
    server: Server,
    model: str,
    prompts: list[Prompt],
    concurrency: int,
    output_len: int,
    *,
    request_rate: float = math.inf,
    seed: int = 0,
    name: str = "ours",
    overrides: Mapping[str, Any] | None = None,
) -> RunResult:
    """``prompts`` against ``server``: at most ``concurrency`` in flight, sent at ``request_rate``
    requests/s (Poisson arrivals; infinite: all at once)."""
    meter = CpuMeter([os.getpid(), *([server.pid] if server.pid else [])])
    load_before = os.getloadavg()[0]
    results, wall = asyncio.run(
        _run_level(server.url, model, prompts, concurrency, output_len, request_rate, seed, overrides)
    )
    rate = "" if math.isinf(request_rate) else f" rate={request_rate:g}/s"
    run = RunResult(
        f"{name} c={concurrency}{rate}", concurrency, results, wall, load_before, request_rate=request_rate
    )
    run.cpu = meter.read()
    return run


def warm_up(base_url: str, model: str, prompt: Prompt, overrides: Mapping[str, Any] | None = None) -> None:
    """One short request, so that the first measured level does not pay for lazy initialisation."""

    async def once() -> RequestResult:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            return await send_request(client, base_url, model, prompt, 8, overrides)

    result = asyncio.run(once())
    if not result.ok:
        raise RuntimeError(f"warm-up request failed: {result.error}")
