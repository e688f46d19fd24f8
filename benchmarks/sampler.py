"""The sampler's cost per decode step: ``sampler.sample`` over a batch of logits at temperature 1.0 (each
row drawn from its own seeded generator), on the engine's CPU kernel (``csrc/sampling.cpp``: the softmax,
the 1,024 most likely tokens and the rest's mass in one pass per row) and on the torch operators that CUDA
and kernel-less CPUs run. Logits are ``randn * 3`` over SmolLM2's vocabulary (49,152) by default: the
cost depends on the shape, not on the model.

    .venv/bin/python benchmarks/sampler.py [--cpu-isa avx2] [--rows 1,8,32] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import os
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
from shared_engine.sampler import RequestSampler, sample
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")
PATHS = {"kernel": "1", "torch": "0"}


def use_path(name: str) -> None:
    os.environ[cpu_kernels.KERNELS_ENV] = PATHS[name]
    cpu_kernels.load.cache_clear()
    if cpu_kernels.load() != (name == "kernel"):
        raise SystemExit(f"the {name} path is not available on this machine")


@torch.inference_mode()
def measure(rows: int, vocab: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(rows)
    logits = torch.randn(rows, vocab) * 3
    samplers = [RequestSampler(SamplingParams(temperature=1.0, seed=i), CPU) for i in range(rows)]
    result: dict[str, Any] = {"rows": rows, "vocab": vocab}
    for name in PATHS:
        use_path(name)
        seconds = best_time(lambda: sample(logits, samplers, with_logprobs=False), CPU, reps, 0.2)
        result[f"{name}_ms"] = round(seconds * 1e3, 3)
    result["speedup"] = round(result["torch_ms"] / result["kernel_ms"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    print(f"sample() at temperature 1.0, {torch.get_num_threads()} threads: ms per call, "
          "kernel / torch operators (speedup)", flush=True)  # fmt: skip
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        r = measure(rows, args.vocab, args.reps)
        results.append(r)
        line = f"  rows {rows:>3}: {r['kernel_ms']:>7.3f} / {r['torch_ms']:>7.3f} ({r['speedup']:.1f}x)"
        print(line, flush=True)
    payload = {
        "benchmark": "sampler",
        "cpu_isa": args.cpu_isa,
        "machine": report.machine_info(CPU, torch.float32),
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='sampler')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
