"""Speech synthesis real-time factor (seconds of compute per second of audio produced; lower is
better) for the packaged Piper voice at 1 and N concurrent requests, in process.

    .venv/bin/python benchmarks/tts.py [--requests 8] [--words 40] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.asr import passages
from pipelines.tts import TTSPipeline, TTSPipelineConfig
from services.config.models import load_model_specs
from services.config.settings import Settings


async def measure(tts: TTSPipeline, texts: list[str], concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(text: str) -> float:
        async with gate:
            start = time.perf_counter()
            samples = await tts.synthesize(text)
            latencies.append(time.perf_counter() - start)
            return len(samples) / tts.sample_rate

    start = time.perf_counter()
    seconds = sum(await asyncio.gather(*(one(t) for t in texts)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "audio_s": round(seconds, 2),
        "wall_s": round(wall, 3),
        "rtf": round(wall / seconds, 4),
        "latency_s_p50": round(latencies[len(latencies) // 2], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--words", type=int, default=40, help="words per request (~15 s of speech)")
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args(argv)
    spec = next(s for s in load_model_specs(Settings.from_env().models_config) if s.task == "tts")
    tts = TTSPipeline(TTSPipelineConfig(spec.name, spec.source, spec.device))
    texts = passages(args.requests, args.words)
    try:
        asyncio.run(tts.synthesize("Warming up."))
        runs = [asyncio.run(measure(tts, texts, level)) for level in (1, args.concurrency)]
    finally:
        tts.shutdown()
    payload = {
        "benchmark": "tts",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "model": spec.name,
        "runs": runs,
    }
    for r in runs:
        audio, wall = r["audio_s"], r["wall_s"]
        print(f"{spec.name} c={r['concurrency']}: {audio} s of audio in {wall} s, RTF {r['rtf']:.3f}")
    print(f"results: {report.write_results(payload, name='tts')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
