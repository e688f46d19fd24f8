"""Int8 linear layers for calls of many rows, such as a speech encoder's 1,500 frames per window: where
float32 matmuls are bound by arithmetic, not by reading weights.

Weights are int8 per output channel; each input row is rounded to int8 with a scale of its own
(``csrc/int8_rows.cpp``), multiplied by oneDNN's integer GEMM (``torch._int_mm``), and the int32
products are scaled back to float32 in their own memory. A scale per row keeps what one scale per tensor
loses (fbgemm's dynamic linear): on Whisper-base's encoder the output's relative error is 6% this way
against 22% with a scale per tensor, and 2.6% for int8 weights alone.

Without AVX-512 VNNI, oneDNN multiplies int8 through ``vpmaddubsw``, whose 16-bit sums of two products
saturate on full-range operands (its unsigned side goes up to 255): weights there are kept to +-63, so
that every pair fits and the integer result is exact. With VNNI they use the full +-127.

Only float32 on a CPU with the engine's kernels built takes this path (:func:`rows_int8_available`):
bf16 and CUDA matmuls are fast enough already.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_engine import cpu_kernels, int_matmul

# The largest weight magnitude at which oneDNN's int8 GEMM is exact without VNNI (module docstring).
SATURATION_FREE_WEIGHT_MAX = 63
FULL_WEIGHT_MAX = 127


def weight_max() -> int:
    """The int8 weight range that this CPU's integer GEMM multiplies exactly."""
    return (
        FULL_WEIGHT_MAX
        if int_matmul.int_matmul_isa() == int_matmul.INT_MATMUL_AVX512_VNNI
        else (SATURATION_FREE_WEIGHT_MAX)
    )


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[rows, features]`` (contiguous float32) as int8 and one float32 scale per row."""
    q, scales = torch.ops.mmserve_cpu.quantize_rows_int8(x)
    return q, scales


class RowInt8Linear(nn.Module):
    """``nn.Linear``'s interface over int8 weights, inputs rounded to int8 per row (module docstring)."""

    weight: torch.Tensor  # int8 [in_features, out_features], as torch._int_mm takes it
    scales: torch.Tensor  # float32 [out_features]
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, max_weight: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / max_weight
        values = torch.round(w / scales[:, None]).clamp(-max_weight, max_weight).to(torch.int8)
        self.register_buffer("weight", values.t().contiguous())
        self.register_buffer("scales", scales.contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.register_buffer("bias", bias)
        self.max_weight = max_weight

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, gelu: bool = False
    ) -> torch.Tensor:
        """``linear(x)``; with ``gelu``, GELU of it (exact); with ``residual`` (the output's shape,
        contiguous float32), that added last — in the pass that turns the integer products into floats."""
        rows = x.reshape(-1, self.in_features).contiguous()
        q, row_scales = quantize_rows(rows)
        acc = torch._int_mm(q, self.weight)
        y = torch.ops.mmserve_cpu.dequantize_rows_(acc, row_scales, self.scales, self.bias, residual, gelu)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, weights within +-{self.max_weight}"


def rows_int8_available(module: nn.Module) -> bool:
    """Whether ``module``'s linear layers can take this path: float32 on a CPU with the kernels built."""
    p = next(module.parameters(), None)
    return (
        p is not None
        and p.device.type == "cpu"
        and p.dtype == torch.float32
        and cpu_kernels.load()
        and int_matmul.int_matmul_isa() is not None
    )
