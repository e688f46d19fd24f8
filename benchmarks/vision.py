"""Vision throughput through REST: images/s classified at 1 and N concurrent clients (one JPEG per
multipart request; batches are made by the server's micro-batcher), real photographs from
scikit-image.

    .venv/bin/python benchmarks/vision.py [--images 256] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import torch
from PIL import Image

from benchmarks import report, server

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat")


def jpegs() -> list[bytes]:
    import skimage.data

    out = []
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def measure(base_url: str, model: str, images: list[bytes], concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, data: bytes) -> None:
        async with gate:
            start = time.perf_counter()
            r = await client.post(
                "/v1/vision/classifications",
                files={"file": ("p.jpg", data, "image/jpeg")},
                data={"model": model},
            )
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(one(client, d) for d in images[:concurrency]))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(client, d) for d in images))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "images": len(images),
        "wall_s": round(wall, 3),
        "images_s": round(len(images) / wall, 1),
        "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 1),
        "latency_ms_p99": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    photos = jpegs()
    images = [photos[i % len(photos)] for i in range(args.images)]
    with server.local_server(args.ready_timeout) as srv:
        runs = [asyncio.run(measure(srv.url, args.model, images, c)) for c in (1, args.concurrency)]
    payload = {
        "benchmark": "vision",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "model": args.model,
        "runs": runs,
    }
    for r in runs:
        print(f"{args.model} c={r['concurrency']}: {r['images_s']} images/s "
              f"(p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms)")  # fmt: skip
    print(f"results: {report.write_results(payload, name='vision')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
