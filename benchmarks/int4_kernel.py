"""The engine's int4 matmul (``int_matmul.int4_linear``: activations rounded to int8 per group of 32,
integer dot products) against a float32 ``F.linear`` of the same weights, on the chat model's projection
shapes, from one row (a decode step) to a chunk of prompts: GFLOP/s, best of several timings each.

Where the kernel runs as AVX2 it switches at 64 rows to its many-rows form (each block of weights
widened to bytes once, then read by every tile of rows), and it beats float32 at every row count there,
so ``quantization = "auto"`` keeps no float copy on such a CPU (``Int4Linear.outruns_float``).

    .venv/bin/python benchmarks/int4_kernel.py [--cpu-isa avx2] [--rows 1,8,32,158,1024,2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.roofline_microbench import best_time
from shared_engine import int_matmul
from shared_engine.int_weights import quantize_int4

# SmolLM2-135M's projections (out x in): fused qkv, o, fused gate-up, down.
DEFAULT_SHAPES = "960x576,576x576,3072x576,576x1536"
GROUP = 32


@torch.inference_mode()
def measure(n: int, k: int, rows: int, isa: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(n + k)
    weight = torch.randn(n, k) * 0.05
    q = quantize_int4(weight, GROUP, torch.float16)
    packed, scales_zeros = int_matmul.pack_int4(q.weight, q.scales_and_zeros)
    x = torch.randn(rows, k)
    cpu = torch.device("cpu")
    float_s = best_time(lambda: F.linear(x, weight), cpu, reps, 0.05)
    int4_s = best_time(lambda: int_matmul.int4_linear(x, packed, scales_zeros, GROUP, isa), cpu, reps, 0.05)
    flop = 2 * rows * n * k
    return {
        "shape": f"{n}x{k}",
        "rows": rows,
        "float32_gflops": round(flop / float_s / 1e9, 1),
        "int4_gflops": round(flop / int4_s / 1e9, 1),
        "int4_speedup": round(float_s / int4_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated OUTxIN")
    p.add_argument("--rows", default="1,8,32,64,158,1024,2048")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    isa = int_matmul.int_matmul_isa()
    if isa is None:
        print("the engine's integer kernels do not run on this CPU (no AVX2, or no compiler)")
        return 1
    print(f"int4 kernel as {'AVX2' if isa == int_matmul.INT_MATMUL_AVX2 else 'AVX-512 VNNI'}, "
          f"{torch.get_num_threads()} threads; GFLOP/s float32 / int4 (speedup)", flush=True)  # fmt: skip
    results = []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        for rows in (int(r) for r in args.rows.split(",")):
            r = measure(n, k, rows, isa, args.reps)
            results.append(r)
            print(f"  {shape:>9} rows {rows:>5}: {r['float32_gflops']:>6.1f} / {r['int4_gflops']:>6.1f} "
                  f"({r['int4_speedup']:.2f}x)", flush=True)  # fmt: skip
    payload = {
        "benchmark": "int4_kernel",
        "cpu_isa": args.cpu_isa,
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "kernel_isa": isa,
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='int4_kernel')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
