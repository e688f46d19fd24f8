"""Weight-only quantization of a decoder's linear layers: int8 per output channel, int4 per group.

Only the weights shrink; everything around the matmuls stays in the model's dtype. Each quantized layer
picks, per call, between a CPU kernel and dequantize-then-matmul, by device, dtype and number of rows.
On a CPU with AVX2 the kernels are the engine's own (``int_matmul``: activations rounded to int8 per
group, integer dot products; figures in ``kernel_row_presets``, measured on a 2-core Xeon with AMX); on
one without, torch's ``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``, measured on a 2-core
AMD EPYC with AVX-512 BF16 (torch 2.11, SmolLM2-135M's projection shapes):

- bfloat16, up to 8 rows: torch's kernels take 0.5-0.7x the time of a bf16 ``F.linear``: a decode
  step at small batch is bound by reading weights. From 16 rows they cost time linear in the rows and
  fall behind the bf16 GEMM (2-2.5x at 32 rows); int8 switches to dequantize-then-matmul past 8 rows.
- float32: their float32 paths are slow (10-20x ``F.linear``), their bfloat16 paths are not and need
  no native bf16, so a float32 layer hands them its rows rounded to bfloat16. As AVX2
  (``ATEN_CPU_CAPABILITY=avx2``) SmolLM2's 121 projections at one row take 8 ms this way against 33 ms
  of float32 ``F.linear``, at 32 rows 63 against 76 ms; int4 stays ahead to 64 rows, int8 to ~40.
- CUDA: always dequantize-then-matmul (correct everywhere, not expected to be faster there).

Both kernels' weight layouts are for a CPU, so a layer packs for one only when it is built on the CPU;
elsewhere it keeps plain values. A model is quantized on the device it will run on (``build_decoder``
does it after moving the weights).

``auto`` is what a CPU deployment should run: int4 in groups of 32 with the float weights kept
(:class:`DualLinear`) on a CPU, nothing on CUDA, where bf16 matmuls are not bound by a CPU's memory. Where
the engine's int4 kernel runs as AVX2 (no AVX-512 VNNI, so no native bf16 either) it is faster than the
float matmul at every row count, prompts included, and the float weights are not kept
(:attr:`Int4Linear.outruns_float`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from shared_engine import int_matmul
from shared_engine import kernel_row_presets as presets
from shared_engine.int_weights import QuantizedInt4, dequantize_int4, quantize_int4, quantize_int8

logger = logging.getLogger(__name__)

# The dtype the CPU kernels take activations and scales in, whatever the model's floating-point dtype.
KERNEL_DTYPE = torch.bfloat16

# A kernel that outruns the float matmul at every row count has no row limit.
UNLIMITED_ROWS = 1 << 30
# The CPU int8 kernel reads out of bounds (wrong results, or a crash) unless K is a multiple of this.
_INT8_KERNEL_K_MULTIPLE = 16
# The CPU int4 packing needs the output features in tiles of 16.
INT4_N_MULTIPLE = 16


class QuantizedLinear(nn.Module):
    """The ``nn.Linear`` interface over quantized weights (no gradients; inference only)."""

    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = self._with_bias(self._matmul(rows.contiguous()))
        return y.view(*x.shape[:-1], self.out_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kernel_rows(self, x: torch.Tensor) -> int:
        """The most rows of ``x``'s dtype and device that the weight-only kernel serves faster than the float
        matmul it replaces (0: none); it depends on nothing else about ``x``."""
        raise NotImplementedError

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel on ``x`` ``[rows, in_features]`` of at most ``kernel_rows(x)`` rows: the decode path,
        with none of ``forward``'s reshaping and checks."""
        return self._with_bias(self._kernel(x))

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def float32_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with float32 results (an LM head's logits)."""
        return self(x).float()

    def beats_float(self, x: torch.Tensor) -> bool:
        """Whether the weight-only kernel serves these rows faster than a float matmul would."""
        return x.reshape(-1, self.in_features).shape[0] <= self.kernel_rows(x)

    def _with_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)

    # Set by quantize_decoder when the float partner of a DualLinear is packed for oneDNN (a faster
    # matmul than F.linear, so the kernel wins on fewer rows).
    float_packed = False
    # The most rows at which the kernel beats a float32 F.linear, a packed bf16 one and a plain bf16 one.
    beats_fp32_rows = beats_packed_rows = beats_bf16_rows = 0

    @property
    def outruns_float(self) -> bool:
        """Whether the kernel beats a float matmul of these weights at every row count, so that a float
        copy beside it would only cost memory."""
        return False

    def _float_rows_limit(self, x: torch.Tensor) -> int:
        """The most rows of ``x`` for which this layer's kernel beats the float matmul it would replace."""
        if x.dtype == torch.float32:
            return self.beats_fp32_rows
        return self.beats_packed_rows if self.float_packed else self.beats_bf16_rows

    def set_float_rows_limit(self, dtype: torch.dtype, rows: int) -> None:
        """Replace the limit ``_float_rows_limit`` gives for inputs of ``dtype`` (one measured on this CPU:
        shared_engine/kernel_rows.py)."""
        if dtype == torch.float32:
            self.beats_fp32_rows = rows
        elif self.float_packed:
            self.beats_packed_rows = rows
        else:
            self.beats_bf16_rows = rows

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _takes_kernel_dtype(x: torch.Tensor) -> bool:
    """Whether the CPU kernels can serve ``x``: bf16 as it is, float32 rounded to bf16 (module docstring)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32)


def _engine_isa(linear: nn.Linear, group: int, int8_activations: bool, pads_rows: bool = False) -> int:
    """The instruction set of the engine's integer matmul for this layer, 0 where it cannot or may not
    serve it (``pads_rows``: the layer pads its output features to the kernel's block of rows)."""
    if not (int8_activations and _takes_kernel_dtype(linear.weight)):
        return 0
    if linear.in_features % group:
        return 0
    if linear.out_features % int_matmul.INT_MATMUL_BLOCK_ROWS and not pads_rows:
        return 0
    return int_matmul.int_matmul_isa() or 0


class Int8Linear(QuantizedLinear):
    """Int8 per output channel. On a CPU its weights are packed for the engine's own kernel where that
    runs (``int_matmul.int_matmul_isa``: int8 activations, integer dot products) or else kept for
    ATen's. For the engine's kernel, output features are padded with zero rows to its block of 16 (a
    Whisper head's 51,865), cut from every result."""

    weight: torch.Tensor
    scales: torch.Tensor
    beats_fp32_rows = presets.INT8_BEATS_FP32_MAX_ROWS
    beats_packed_rows = presets.INT8_BEATS_PACKED_MAX_ROWS
    beats_bf16_rows = presets.INT8_BEATS_BF16_MAX_ROWS

    def __init__(self, linear: nn.Linear, int8_activations: bool = True) -> None:
        super().__init__(linear)
        w = linear.weight.detach()
        self.engine_isa = _engine_isa(linear, int_matmul.INT8_ACTIVATION_GROUP, int8_activations, True)
        self.engine_kernel = self.engine_isa != 0
        scales_dtype = (
            torch.float32 if self.engine_kernel else KERNEL_DTYPE if w.device.type == "cpu" else w.dtype
        )
        q = quantize_int8(w, scales_dtype)
        values, scales = q.weight, q.scales
        if self.engine_kernel:
            padding = -self.out_features % int_matmul.INT_MATMUL_BLOCK_ROWS
            values = torch.cat([values, values.new_zeros(padding, self.in_features)])
            scales = torch.cat([scales, scales.new_zeros(padding)])
            values = int_matmul.pack_int8(values)
            self.beats_packed_rows = presets.ENGINE_INT8_BEATS_PACKED_MAX_ROWS
        self.register_buffer("weight", values)
        self.register_buffer("scales", scales)
        self._kernel_shape_ok = self.engine_kernel or self.in_features % _INT8_KERNEL_K_MULTIPLE == 0

    def _kernel_max_rows(self, x: torch.Tensor) -> int:
        """The most rows of ``x`` the kernel serves faster than dequantizing (0: it cannot serve them)."""
        if not (self._kernel_shape_ok and _takes_kernel_dtype(x)):
            return 0
        return presets.INT8_BEATS_FP32_MAX_ROWS if x.dtype == torch.float32 else presets.INT8_KERNEL_MAX_ROWS

    def kernel_rows(self, x: torch.Tensor) -> int:
        return min(self._float_rows_limit(x), self._kernel_max_rows(x))

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine_kernel:
            return self._engine_matmul(x, float_out=False)
        rows = x if x.dtype == KERNEL_DTYPE else x.to(KERNEL_DTYPE)
        y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight, self.scales)
        return y if x.dtype == KERNEL_DTYPE else y.to(x.dtype)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self._kernel_max_rows(x):
            return self._kernel(x)
        n = self.out_features
        weight = int_matmul.unpack_int8(self.weight)[:n] if self.engine_kernel else self.weight
        # Per-channel scales commute with the matmul: scale the [M, N] output, not the [N, K] weight.
        return F.linear(x, weight.to(x.dtype)) * self.scales[:n].to(x.dtype)

    def _engine_matmul(self, x: torch.Tensor, float_out: bool) -> torch.Tensor:
        y = int_matmul.int8_linear(x.contiguous(), self.weight, self.scales, self.engine_isa, float_out)
        return y if y.shape[1] == self.out_features else y[:, : self.out_features].contiguous()

    def float32_forward(self, x: torch.Tensor) -> torch.Tensor:
        # The engine kernel's float32 sums as they are: not rounded to x's dtype and widened again.
        if self.engine_kernel and x.dim() == 2 and x.shape[0] <= self._kernel_max_rows(x):
            return self._with_bias(self._engine_matmul(x, float_out=True))
        return super().float32_forward(x)


class Int4Linear(QuantizedLinear):
    """Int4 per group. On a CPU its weights are packed for the engine's own kernel where that runs
    (``int_matmul.int_matmul_isa``: int8 activations, integer dot products) or else for ATen's."""

    weight: torch.Tensor
    scales_and_zeros: torch.Tensor
    beats_fp32_rows = presets.INT4_BEATS_FP32_MAX_ROWS
    beats_packed_rows = presets.INT4_BEATS_PACKED_MAX_ROWS
    beats_bf16_rows = presets.INT4_BEATS_BF16_MAX_ROWS

    def __init__(self, linear: nn.Linear, group_size: int, int8_activations: bool = True) -> None:
        super().__init__(linear)
        w = linear.weight.detach()
        self.group_size = group_size
        self.cpu_packed = _takes_kernel_dtype(w)
        self.engine_isa = _engine_isa(linear, group_size, int8_activations)
        self.engine_kernel = self.engine_isa != 0
        scales_dtype = torch.float16 if self.engine_kernel else KERNEL_DTYPE if self.cpu_packed else w.dtype
        q = quantize_int4(w, group_size, scales_dtype)
        scales_and_zeros = q.scales_and_zeros
        if self.engine_kernel:
            packed, scales_and_zeros = int_matmul.pack_int4(q.weight, q.scales_and_zeros)
            self.beats_packed_rows = presets.ENGINE_INT4_BEATS_PACKED_MAX_ROWS
            self.beats_bf16_rows = presets.ENGINE_INT4_BEATS_BF16_MAX_ROWS
        elif self.cpu_packed:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.weight.to(torch.int32), 1)
        else:
            packed = q.weight[:, 0::2] | (q.weight[:, 1::2] << 4)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    def unpacked(self) -> QuantizedInt4:
        """The plain int4 values (only for layers not packed for the CPU kernel)."""
        if self.cpu_packed:
            raise RuntimeError("an int4 layer packed for the CPU kernel cannot be unpacked")
        values = torch.stack([self.weight & 0xF, self.weight >> 4], dim=-1)
        return QuantizedInt4(values.view(self.out_features, self.in_features), self.scales_and_zeros)

    @property
    def outruns_float(self) -> bool:
        """The engine's kernel as AVX2, which has no native bf16 to lose to.
        Against float32 ``F.linear`` held to AVX2, on SmolLM2's projections: 1.1-1.6x at a prompt's 158
        rows, 1.2-1.5x at 1,024, 1.2-1.7x at 32, 1.7-5.6x at one row but for the smallest (0.9x with its
        float32 weight hot in cache, which a whole model's are not) (``benchmarks/int4_kernel.py``)."""
        return self.engine_isa == int_matmul.INT_MATMUL_AVX2

    def kernel_rows(self, x: torch.Tensor) -> int:
        if not (self.cpu_packed and _takes_kernel_dtype(x)):
            return 0
        return UNLIMITED_ROWS if self.outruns_float else self._float_rows_limit(x)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine_kernel:
            return int_matmul.int4_linear(
                x.contiguous(), self.weight, self.scales_and_zeros, self.group_size, self.engine_isa
            )
        rows = x if x.dtype == KERNEL_DTYPE else x.to(KERNEL_DTYPE)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.contiguous(), self.weight, self.group_size, self.scales_and_zeros
        )
        return y if x.dtype == KERNEL_DTYPE else y.to(x.dtype)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_packed:
            if not _takes_kernel_dtype(x):
                raise RuntimeError(
                    f"int4 layer packed for the CPU kernel called with {x.dtype} on {x.device}: quantize "
                    "the model on the device it runs on, in bfloat16 or float32"
                )
            return self._kernel(x)
        return F.linear(x, dequantize_int4(self.unpacked(), self.group_size, x.dtype))
