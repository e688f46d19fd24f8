"""The machine's side of the roofline: matmul FLOP/s (square, decode-shaped, and the model's own linear
layers with the kernels the engine uses) and memory bandwidth, each the best of several timed runs."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.noise import CpuMeter
from benchmarks.roofline_model import projections

DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, reps: int, min_time: float) -> float:
    """Seconds per call of ``fn``: the best of ``reps`` runs of enough calls to last ``min_time``."""
    fn()  # warm-up: kernel selection, first-touch of the output
    sync(device)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        calls = max(calls * 2, math.ceil(calls * 1.2 * min_time / max(elapsed, 1e-9)))
    best = elapsed / calls
    for _ in range(reps - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


@torch.inference_mode()
def matmul_flops(
    m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int, min_time: float
) -> dict[str, Any]:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = best_time(lambda: torch.matmul(a, b), device, reps, min_time)
    return {
        "shape": f"[{m}x{k}] @ [{k}x{n}]",
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "ms": round(seconds * 1e3, 4),
        "gflop_s": round(2 * m * k * n / seconds / 1e9, 2),
    }


def matmuls(
    squares: list[int], batches: list[int], arch: Any, dtypes: list[torch.dtype], device: torch.device,
    reps: int, min_time: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Square matmuls of each size, then ``[batch x hidden] @ [hidden x intermediate]`` at each batch size
    (what a decode step's MLP multiplies), each in every dtype of ``dtypes``."""
    out: list[dict[str, Any]] = []
    for size in squares:
        for dt in dtypes:
            out.append({"op": "square", **matmul_flops(size, size, size, dt, device, reps, min_time)})
    for b in batches:
        for dt in dtypes:
            shape = (b, arch.hidden_size, arch.intermediate_size)
            out.append({"op": "decode", "batch": b, **matmul_flops(*shape, dt, device, reps, min_time)})
    return out


@torch.inference_mode()
def bandwidth(mib: int, device: torch.device, reps: int, min_time: float) -> dict[str, Any]:
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    copy_s = best_time(lambda: dst.copy_(src), device, reps, min_time)
    read_s = best_time(lambda: src.sum(), device, reps, min_time)
    return {
        "mib": mib,
        "copy_gb_s": round(2 * nbytes / copy_s / 1e9, 2),  # read + write
        "read_gb_s": round(nbytes / read_s / 1e9, 2),  # torch.sum
    }


@torch.inference_mode()
def linears_step(
    model: Any, batch: int, dtype: torch.dtype, device: torch.device, reps: int, min_time: float
) -> dict[str, Any]:
    """Time of the model's own linear layers and LM head at ``batch`` rows, with their kernels: a decode
    step's matmuls with nothing else."""
    matrices = projections(model)
    inputs = [torch.randn(batch, i, device=device).to(dtype) for _, i, _ in matrices]

    def step() -> None:
        for x, (apply, _, _) in zip(inputs, matrices, strict=True):
            apply(x)

    seconds = best_time(step, device, reps, min_time)
    flops = 2 * batch * sum(i * o for _, i, o in matrices)
    return {
        "batch": batch,
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "matrices": len(matrices),
        "ms": round(seconds * 1e3, 4),
        "gflop_s": round(flops / seconds / 1e9, 2),
        "tok_s_bound": round(batch / seconds, 1),
    }


@dataclass(frozen=True)
class MachineFigures:
    matmul: list[dict[str, Any]]  # square matmuls, then decode-shaped ones (``matmuls``)
    linears: list[dict[str, Any]]  # the model's own linear layers, per batch size (``linears_step``)
    bandwidth: dict[str, Any]
    other_cores: float | None  # CPU other processes took meanwhile (benchmarks.noise.CpuMeter)

    def peak_gflop_s(self, dtype_name: str) -> float:
        """The best square matmul in ``dtype_name``: the compute roof."""
        return max(r["gflop_s"] for r in self.matmul if r["op"] == "square" and r["dtype"] == dtype_name)

    def shape_gflop_s(self, batch: int, dtype_name: str) -> float:
        return next(
            x["gflop_s"]
            for x in self.matmul
            if x["op"] == "decode" and x["batch"] == batch and x["dtype"] == dtype_name
        )

    def linears_gflop_s(self, batch: int) -> float:
        return float(next(x for x in self.linears if x["batch"] == batch)["gflop_s"])


def measure_machine(
    model: Any, squares: list[int], batches: list[int], dtype: torch.dtype, device: torch.device,
    reps: int, min_time: float, bw_mib: int,
) -> MachineFigures:  # fmt: skip
    """Matmuls in bfloat16, float32 and ``dtype``, the model's linear layers in ``dtype``, then the
    bandwidth; progress on stdout."""
    meter = CpuMeter([os.getpid()])
    dtypes = list(dict.fromkeys([torch.bfloat16, torch.float32, dtype]))
    matmul = matmuls(squares, batches, model.arch, dtypes, device, reps, min_time)
    print("matmuls done", flush=True)
    linears = [linears_step(model, b, dtype, device, reps, min_time) for b in batches]
    bw = bandwidth(bw_mib, device, reps, min_time)
    other_cores = meter.read()["other_cores"]
    print("bandwidth done", flush=True)
    return MachineFigures(matmul, linears, bw, other_cores)
