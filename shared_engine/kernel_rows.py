"""How many rows a dual layer's weight-only kernel serves before its float weight takes over, measured on
this CPU when a model is built.

A decode step at a few requests reads every weight once: the int4 kernel reads a quarter of bf16's bytes
but does more work per row, so from some row count on the float GEMM is faster. Where that count lies
depends on the machine more than on the instruction set. On a 2-core Xeon with AMX whose 480 MiB L3 held
the 270 MiB of SmolLM2's bf16 weights the kernel won up to 4 rows; on a 2-core AMD EPYC (Zen 5, 32 MiB
of L3), where those weights stream from memory every step, it took 0.46 of the float weights' time at 8
rows, 0.77 at 32 and 0.96-1.00 at 96-128 (decode 2.2x faster at batch 8 and 1.4x at 32 than with the
preset: benchmarks/kernel_rows.py). A microbenchmark of one layer would keep that layer's weight in
cache and miss the difference, so each candidate count runs every dual layer of a group in the model's
order, as a decode step does, once through the kernels and once through the float weights. A process
measures a set of layer shapes once (about a second).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn

from shared_engine.dual_linear import DualLinear

logger = logging.getLogger(__name__)

CANDIDATE_ROWS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TIMED_RUNS = 3
# Limits measured in this process, by what decides them: the layers' kinds, shapes and preset limit.
_measured: dict[tuple[object, ...], int] = {}


def pass_seconds(
    layers: Sequence[DualLinear], inputs: dict[int, torch.Tensor], rows: int, through_kernel: bool
) -> float:
    """The best of ``TIMED_RUNS`` passes of ``rows`` rows through every layer, by kernel or float weight."""

    def run() -> None:
        for d in layers:
            x = inputs[d.quantized.in_features][:rows]
            if through_kernel:
                d.quantized.kernel_forward(x)
            else:
                d.float_linear(x)

    run()  # first touch: oneDNN's primitive cache, the allocator
    best = float("inf")
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _measured_limit(layers: Sequence[DualLinear], dtype: torch.dtype) -> tuple[int, dict[int, float]]:
    """The most rows at which the kernels beat the float weights over ``layers``, and the kernels' time as
    a share of the float weights' at each count measured (the layers are left at the last count tried,
    for the caller to set). Only counts above the layers' preset limit are
    tried: it was measured where the float weights were at their best (a large L3 holding all of them)."""
    inputs = {
        n: torch.randn(max(CANDIDATE_ROWS), n, dtype=dtype)  # on the CPU, as the layers are
        for n in {d.quantized.in_features for d in layers}
    }

    def kernel_rows() -> int:
        return min(d.quantized.kernel_rows(inputs[d.quantized.in_features]) for d in layers)

    limit = kernel_rows()
    shares: dict[int, float] = {}
    for rows in (r for r in CANDIDATE_ROWS if r > limit):
        for d in layers:
            d.quantized.set_float_rows_limit(dtype, rows)
        if kernel_rows() < rows:
            break  # past what a kernel serves at all
        kernel = pass_seconds(layers, inputs, rows, through_kernel=True)
        shares[rows] = round(kernel / pass_seconds(layers, inputs, rows, through_kernel=False), 2)
        if shares[rows] > 1.0:
            break
        limit = rows
    return limit, shares


@torch.inference_mode()
def calibrate_kernel_rows(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    """Set the row limit of the model's dual layers on a CPU, one limit for the projections and one for
    the LM head, as measured now; returns them by group. Call before the model's first forward."""
    groups: dict[str, list[DualLinear]] = {"projections": [], "lm_head": []}
    for name, module in model.named_modules():
        if isinstance(module, DualLinear) and module.quantized.weight.device.type == "cpu":
            groups["lm_head" if name == "lm_head" else "projections"].append(module)
    limits = {}
    for group, layers in groups.items():
        if not layers:
            continue
        probe = torch.empty(1, layers[0].quantized.in_features, dtype=dtype)
        shapes = [(type(d.quantized).__name__, d.quantized.in_features, d.quantized.out_features)
                  for d in layers]  # fmt: skip
        key = (dtype, layers[0].quantized.kernel_rows(probe), *shapes)
        if key not in _measured:
            _measured[key], shares = _measured_limit(layers, dtype)
            logger.info(
                "%s: weight-only kernels up to %d rows (their time / the float weights' by rows: %s)",
                group, _measured[key], shares,
            )  # fmt: skip
        limits[group] = _measured[key]
        for d in layers:
            d.quantized.set_float_rows_limit(dtype, limits[group])
    return limits
