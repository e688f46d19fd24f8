"""Embedding throughput: sentences/s through REST at N concurrent clients (one sentence per request,
so every batch is made by the server's micro-batcher) against the same model called offline
in-process with batch 64, in one run. Target: REST ≥ 70% of offline.

    .venv/bin/python benchmarks/embeddings.py [--sentences 2048] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import torch

from benchmarks import report, server
from benchmarks.workload import corpus_words, default_corpus
from pipelines.embedding import EmbeddingPipeline, EmbeddingPipelineConfig
from services.config.models import load_model_specs
from services.config.settings import Settings

TARGET = 0.70


def sentences(count: int, seed: int) -> list[str]:
    """Windows of 18–26 words (~130 characters) of a real text, chosen by seed."""
    words = corpus_words(default_corpus())
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(18, 26)
        start = rng.randrange(0, len(words) - n)
        out.append(" ".join(words[start : start + n]))
    return out


def offline(texts: list[str], batch: int) -> dict[str, Any]:
    spec = next(s for s in load_model_specs(Settings.from_env().models_config) if s.task == "embedding")
    pipeline = EmbeddingPipeline(EmbeddingPipelineConfig(spec.name, spec.source, spec.dtype, spec.device))
    try:
        ids = pipeline.tokenize(texts, truncate=True)
        pipeline.encode_batch(ids[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(ids), batch):
            pipeline.encode_batch(ids[i : i + batch])
        wall = time.perf_counter() - start
    finally:
        pipeline.shutdown()
    return {
        "batch": batch,
        "sentences": len(texts),
        "wall_s": round(wall, 3),
        "sentences_s": round(len(texts) / wall, 1),
    }


async def rest(base_url: str, model: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, text: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            r = await client.post("/v1/embeddings", json={"model": model, "input": text})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(one(client, t) for t in texts[:concurrency]))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(client, t) for t in texts))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "sentences": len(texts),
        "wall_s": round(wall, 3),
        "sentences_s": round(len(texts) / wall, 1),
        "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 1),
        "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sentences", type=int, default=2048)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=64, help="offline batch size")
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    texts = sentences(args.sentences, args.seed)
    with server.local_server(args.ready_timeout) as srv:
        served = asyncio.run(rest(srv.url, args.model, texts, args.concurrency))
    local = offline(texts, args.batch)  # the server is stopped: the two never share the CPU
    ratio = served["sentences_s"] / local["sentences_s"]
    payload = {
        "benchmark": "embeddings",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "model": args.model,
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "rest": served,
        "offline": local,
        "rest_over_offline": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }
    print(f"REST, {args.concurrency} clients, 1 sentence/request: {served['sentences_s']} sentences/s "
          f"(p50 {served['latency_ms_p50']} ms, p99 {served['latency_ms_p99']} ms)")  # fmt: skip
    print(f"offline, batch {args.batch}: {local['sentences_s']} sentences/s")
    print(f"REST / offline = {ratio:.1%} (target >= {TARGET:.0%}: {'met' if ratio >= TARGET else 'NOT met'})")
    print(f"results: {report.write_results(payload, name='embeddings')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
