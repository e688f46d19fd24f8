"""The engine's integer matmuls (``csrc/quantized_linear.cpp``, built with the other CPU kernels): int4
and int8 weights times activations quantized to int8 per group of features, multiplied in integer dot
products (AVX-512 VNNI, or AVX2). Their weight layouts, and which instruction set this CPU runs them with.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from shared_engine.cpu_kernels import load

# The instruction sets, the weight layouts' block of output rows, and the int8 matmul's group of input
# features per activation scale.
INT_MATMUL_AVX2, INT_MATMUL_AVX512_VNNI = 1, 2
INT_MATMUL_BLOCK_ROWS = 16
INT8_ACTIVATION_GROUP = 32


@functools.cache
def int_matmul_isa() -> int | None:
    """The instruction set ``int4_linear`` and ``int8_linear`` run with on this CPU, or None where they
    cannot run (no kernels, or no AVX2): AVX-512 VNNI where ATen itself runs AVX-512 and the CPU has
    VNNI, else AVX2 where ATen runs AVX2 or better (``ATEN_CPU_CAPABILITY=avx2`` tests that path on an
    AVX-512 CPU)."""
    if not load():
        return None
    _register_fakes()
    capability = torch.backends.cpu.get_cpu_capability()
    supported = torch.ops.mmserve_cpu.int_matmul_supported
    if capability == "AVX512" and supported(INT_MATMUL_AVX512_VNNI):
        return INT_MATMUL_AVX512_VNNI
    if capability in ("AVX512", "AVX2") and supported(INT_MATMUL_AVX2):
        return INT_MATMUL_AVX2
    return None


def int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group_size: int, isa: int
) -> torch.Tensor:
    """``x`` ``[rows, in_features]`` (contiguous float32 or bfloat16) times an int4 weight in the kernel's
    layout (``pack_int4``), activations quantized to int8 per group, on ``isa`` (``int_matmul_isa()``); the
    result in ``x``'s dtype."""
    return torch.ops.mmserve_cpu.int4_linear(x, packed, scales_zeros, group_size, isa)


def pack_int4(values: torch.Tensor, scales_and_zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``int4_linear``'s layout of int4 ``values`` (uint8 0..15, ``[N, K]``, N a multiple of 16) and
    ``scales_and_zeros`` (``[K / group, N, 2]``, as ``int_weights.quantize_int4`` gives them): per block of
    16 rows and 8 features, 64 bytes, byte ``4 * r + i`` = feature ``i`` of row ``r`` | feature ``4 + i``
    << 4; scales and zeros float16 ``[N / 16, groups, 2, 16]``."""
    n, k = values.shape
    if n % INT_MATMUL_BLOCK_ROWS or k % 8:
        raise ValueError(
            f"int4_linear needs out_features % {INT_MATMUL_BLOCK_ROWS} == 0 and in_features % 8 == 0"
        )
    blocks = values.view(n // INT_MATMUL_BLOCK_ROWS, INT_MATMUL_BLOCK_ROWS, k // 8, 2, 4).permute(
        0, 2, 3, 1, 4
    )
    packed = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n // INT_MATMUL_BLOCK_ROWS, k // 8, 64)
    groups = scales_and_zeros.shape[0]
    sz = scales_and_zeros.to(torch.float16).view(groups, n // INT_MATMUL_BLOCK_ROWS, INT_MATMUL_BLOCK_ROWS, 2)
    return packed.contiguous(), sz.permute(1, 0, 3, 2).contiguous()


def int8_linear(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, isa: int, float_out: bool = False
) -> torch.Tensor:
    """``x`` ``[rows, in_features]`` (contiguous float32 or bfloat16) times an int8 weight in the kernel's
    layout (``pack_int8``) and its float32 per-row ``scales``, activations quantized to int8 per
    ``INT8_ACTIVATION_GROUP`` features; the result in ``x``'s dtype, or float32 (``float_out``: the
    kernel's own sums, not rounded to ``x``'s dtype)."""
    return torch.ops.mmserve_cpu.int8_linear(x, packed, scales, INT8_ACTIVATION_GROUP, isa, float_out)


def pack_int8(values: torch.Tensor) -> torch.Tensor:
    """``int8_linear``'s layout of int8 ``values`` ``[N, K]`` (N a multiple of 16, K of 32): per block of
    16 rows and 4 features, 64 bytes, byte ``4 * r + i`` = feature ``i`` of row ``r``."""
    n, k = values.shape
    if n % INT_MATMUL_BLOCK_ROWS or k % INT8_ACTIVATION_GROUP:
        raise ValueError(
            f"int8_linear needs out_features % {INT_MATMUL_BLOCK_ROWS} == 0 and "
            f"in_features % {INT8_ACTIVATION_GROUP} == 0"
        )
    blocks = values.view(n // INT_MATMUL_BLOCK_ROWS, INT_MATMUL_BLOCK_ROWS, k // 4, 4).transpose(1, 2)
    return blocks.reshape(n // INT_MATMUL_BLOCK_ROWS, k // 4, 64).contiguous().view(torch.uint8)


def unpack_int8(packed: torch.Tensor) -> torch.Tensor:
    """The plain int8 ``[N, K]`` weight of ``pack_int8``'s layout."""
    blocks, steps, _ = packed.shape
    rows = packed.view(torch.int8).view(blocks, steps, INT_MATMUL_BLOCK_ROWS, 4).transpose(1, 2)
    return rows.reshape(blocks * INT_MATMUL_BLOCK_ROWS, steps * 4)


@functools.cache
def _register_fakes() -> None:
    """Output shapes for torch.compile, which traces layers calling the kernels."""

    @torch.library.register_fake("mmserve_cpu::int4_linear")
    def _(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int, isa: int) -> Any:
        return x.new_empty((x.shape[0], packed.shape[0] * INT_MATMUL_BLOCK_ROWS))

    @torch.library.register_fake("mmserve_cpu::int8_linear")
    def _(
        x: torch.Tensor,
        packed: torch.Tensor,
        scales: torch.Tensor,
        group: int,
        isa: int,
        float_out: bool = False,
    ) -> Any:
        dtype = torch.float32 if float_out else x.dtype
        return x.new_empty((x.shape[0], packed.shape[0] * INT_MATMUL_BLOCK_ROWS), dtype=dtype)
