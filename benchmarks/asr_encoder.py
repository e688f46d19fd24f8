"""Whisper's encoder alone, per 30-second window: ours in float32 and with its linear layers in int8 rows
(``encoder_quantization = "int8"``), against CTranslate2's int8 encoder (what faster-whisper runs) on the
same weights. Random log-mel input (the cost does not depend on the audio); the median of ``--reps``
timings at each batch size.

    .venv/bin/python benchmarks/asr_encoder.py [--model whisper-base] [--batches 1,8] [--cpu-isa avx2]

As AVX2 CTranslate2 is held there too: ``CT2_FORCE_CPU_ISA=AVX2`` for its own kernels, and the MKL
setting that ``--cpu-isa avx2`` makes for its int8 GEMM (without it CTranslate2 still runs MKL's
AVX-512 code).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration

from benchmarks import report
from benchmarks.asr import ct2_folder, spec_named
from benchmarks.cpu_isa import ISAS, reexec_as
from pipelines.asr.loader import prepare_whisper_folder
from services.config.settings import Settings
from shared_engine.models.whisper_encoder import Int8RowsWhisperEncoder
from shared_engine.row_int8_linear import rows_int8_available

MEL_BINS, FRAMES = 80, 3000


def median_ms(run: Callable[[], Any], reps: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    args = p.parse_args(argv)
    if args.cpu_isa == "avx2":
        os.environ.setdefault("CT2_FORCE_CPU_ISA", "AVX2")
    reexec_as(args.cpu_isa)
    import ctranslate2

    spec = spec_named(args.model)
    settings = Settings.from_env()
    folder = prepare_whisper_folder(spec.source, spec.parts, settings.model_cache_dir)
    hf = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).model.encoder.eval()
    int8_encoder = Int8RowsWhisperEncoder(hf) if rows_int8_available(hf) else None
    ct2 = ctranslate2.models.Whisper(
        str(ct2_folder(spec, settings.model_cache_dir / "ct2-joined")),
        device="cpu", compute_type="int8", intra_threads=torch.get_num_threads(),
    )  # fmt: skip
    rows: dict[str, dict[str, float]] = {"ctranslate2 int8": {}, "ours float32": {}, "ours int8 rows": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        mel = torch.randn(batch, MEL_BINS, FRAMES)
        features = ctranslate2.StorageView.from_array(mel.numpy().astype(np.float32))
        runs: dict[str, Callable[[], Any]] = {
            "ctranslate2 int8": functools.partial(ct2.encode, features),
            "ours float32": functools.partial(hf, mel),
        }
        if int8_encoder is not None:
            runs["ours int8 rows"] = functools.partial(int8_encoder, mel)
        with torch.inference_mode():
            for name, run in runs.items():
                rows[name][str(batch)] = median_ms(run, args.reps) / batch
        done = "  ".join(f"{name} {ms[str(batch)]:.0f}" for name, ms in rows.items() if str(batch) in ms)
        print(f"batch {batch}, ms per window: {done}", flush=True)
    print(f"{args.model} encoder, ms per window:")
    for name, per_batch in rows.items():
        cells = "  ".join(f"batch {b}: {ms:.0f}" for b, ms in per_batch.items())
        print(f"  {name:<17} {cells or 'not available here (no engine kernels)'}")
    payload = {
        "benchmark": "asr_encoder",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "model": args.model,
        "ms_per_window": rows,
    }
    print(f"results: {report.write_results(payload, name=f'asr_encoder-{args.model}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
