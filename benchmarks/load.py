"""The client side: streamed chat requests with bounded concurrency, timed at the client."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx

from benchmarks.metrics import RequestResult, RunResult
from benchmarks.noise import CpuMeter
from benchmarks.server import Server
from benchmarks.workload import Prompt

REQUEST_TIMEOUT_S = 1800.0


def request_body(model: str, prompt: Prompt, output_len: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt.text}],
        "max_tokens": output_len,
        "temperature": 1.0,
        "seed": prompt.seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


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
    client: httpx.AsyncClient, base_url: str, model: str, prompt: Prompt, output_len: int
) -> RequestResult:
    body = request_body(model, prompt, output_len)
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
    base_url: str, model: str, prompts: list[Prompt], concurrency: int, output_len: int
) -> RunResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    load_before = os.getloadavg()[0]
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def bounded(prompt: Prompt) -> RequestResult:
            async with semaphore:
                return await send_request(client, base_url, model, prompt, output_len)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts))
        wall = time.perf_counter() - start
    return RunResult(f"ours c={concurrency}", concurrency, list(results), wall, load_before)


def run_level(
    server: Server, model: str, prompts: list[Prompt], concurrency: int, output_len: int
) -> RunResult:
    meter = CpuMeter([os.getpid(), *([server.pid] if server.pid else [])])
    run = asyncio.run(_run_level(server.url, model, prompts, concurrency, output_len))
    run.cpu = meter.read()
    return run


def warm_up(base_url: str, model: str, prompt: Prompt) -> None:
    """One short request, so that the first measured level does not pay for lazy initialisation."""

    async def once() -> RequestResult:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            return await send_request(client, base_url, model, prompt, 8)

    result = asyncio.run(once())
    if not result.ok:
        raise RuntimeError(f"warm-up request failed: {result.error}")
