"""The decode step's attention on the engine's CPU kernel (``cpu_kernels.paged_decode_attention``): one new
token per request over its cached keys and values, for every layer of the chat model, as a decode step of
``--batch`` requests runs it. Shapes are SmolLM2-135M's (30 layers, 9 query heads on 3 kv heads of 64);
each layer has its own cache tensor and the requests' blocks lie where a busy allocator leaves them (a
seeded shuffle), so the keys and values come from memory, not from a cache that one layer left warm.
Context lengths are drawn uniformly from ``--context``, the range a 32-stream serving run with 158-token
prompts and 128 output tokens passes through.

    .venv/bin/python benchmarks/decode_attention.py [--cpu-isa avx2] [--batch 32] [--context 158,286]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.roofline_microbench import best_time
from shared_engine import cpu_kernels
from shared_engine.attention import kv_cache_dtype
from shared_engine.device import resolve_dtype

CPU = torch.device("cpu")
LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 30, 9, 3, 64, 16


@torch.inference_mode()
def measure(batch: int, low: int, high: int, reps: int) -> dict[str, Any]:
    dtype = resolve_dtype("auto", CPU)
    cache_dtype = kv_cache_dtype("auto", dtype)
    generator = torch.Generator().manual_seed(batch)
    lengths = torch.randint(low, high + 1, (batch,), generator=generator)
    blocks_per_request = (lengths + BLOCK - 1) // BLOCK
    num_blocks = int(blocks_per_request.sum()) * 2
    order = torch.randperm(num_blocks, generator=generator)
    tables = torch.zeros(batch, int(blocks_per_request.max()), dtype=torch.long)
    taken = 0
    for r, n in enumerate(blocks_per_request.tolist()):
        tables[r, :n] = order[taken : taken + n]
        taken += n
    caches = [
        torch.randn(2, KV_HEADS, num_blocks, BLOCK, HEAD_DIM, generator=generator).to(cache_dtype)
        for _ in range(LAYERS)
    ]
    query = torch.randn(batch, HEADS, HEAD_DIM, generator=generator).to(dtype)
    out = torch.empty_like(query)

    def step() -> None:
        for cache in caches:
            cpu_kernels.paged_decode_attention(out, query, cache, tables, lengths, HEAD_DIM**-0.5)

    seconds = best_time(step, CPU, reps, 0.2)
    kv_bytes = int(lengths.sum()) * KV_HEADS * HEAD_DIM * 2 * cache_dtype.itemsize * LAYERS
    return {
        "batch": batch,
        "context": [low, high],
        "mean_context": round(float(lengths.float().mean()), 1),
        "dtype": str(dtype).removeprefix("torch."),
        "kv_cache_dtype": str(cache_dtype).removeprefix("torch."),
        "step_ms": round(seconds * 1e3, 2),
        "kv_gb_per_s": round(kv_bytes / seconds / 1e9, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--batch", default="1,8,32", help="comma-separated requests per step")
    p.add_argument("--context", default="158,286", help="LOW,HIGH tokens cached per request")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    if not cpu_kernels.load():
        raise SystemExit("the engine's CPU kernels are not available on this machine")
    low, high = (int(x) for x in args.context.split(","))
    print(f"decode attention, {LAYERS} layers, {torch.get_num_threads()} threads: ms per step "
          "(KV read GB/s)", flush=True)  # fmt: skip
    results = []
    for batch in (int(b) for b in args.batch.split(",")):
        r = measure(batch, low, high, args.reps)
        results.append(r)
        print(f"  batch {batch:>3}, mean context {r['mean_context']:>5}: {r['step_ms']:>7.2f} ms "
              f"({r['kv_gb_per_s']} GB/s)", flush=True)  # fmt: skip
    payload = {
        "benchmark": "decode_attention",
        "cpu_isa": args.cpu_isa,
        "machine": report.machine_info(CPU, resolve_dtype("auto", CPU)),
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='decode_attention')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
