"""Integer weight formats: symmetric int8 per output channel and asymmetric int4 per group of input
features, each with its quantize and dequantize (the reference every kernel is tested against)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class QuantizedInt8(NamedTuple):
    weight: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # [N]


class QuantizedInt4(NamedTuple):
    weight: torch.Tensor  # uint8 values 0..15, [N, K]
    scales_and_zeros: torch.Tensor  # [K / group_size, N, 2]: w = (q - 8) * scale + zero


def quantize_int8(weight: torch.Tensor, dtype: torch.dtype) -> QuantizedInt8:
    """Symmetric per-output-channel int8; scales in ``dtype``, rounded before the weights are."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10).to(dtype)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return QuantizedInt8(q, scales)


def dequantize_int8(q: QuantizedInt8, dtype: torch.dtype) -> torch.Tensor:
    return (q.weight.float() * q.scales.float()[:, None]).to(dtype)


def quantize_int4(weight: torch.Tensor, group_size: int, dtype: torch.dtype) -> QuantizedInt4:
    """Asymmetric int4 per group of ``group_size`` input features, in the CPU kernels' convention; scales
    and zeros in ``dtype`` (float16's smallest normal bounds its scales)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}")
    w = weight.float().view(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=max(1e-10, torch.finfo(dtype).tiny)).to(dtype).float()
    zeros = (lo + 8 * scales).to(dtype).float()
    q = torch.round((w - zeros[..., None]) / scales[..., None] + 8).clamp(0, 15).to(torch.uint8)
    packed = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(dtype)
    return QuantizedInt4(q.view(n, k), packed)


def dequantize_int4(q: QuantizedInt4, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    scales = q.scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    zeros = q.scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return ((q.weight.float() - 8) * scales + zeros).to(dtype)
