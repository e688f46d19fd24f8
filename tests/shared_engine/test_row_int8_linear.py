"""Int8 linear layers for many rows: the row rounding and the in-place rescale against torch's own
arithmetic, oneDNN's integer GEMM exact at the weight range chosen for this CPU (the saturation that
full-range weights hit without VNNI), the layer against float32 (GELU and a residual folded in), and
where the path is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared_engine import int_matmul
from shared_engine.row_int8_linear import (
    FULL_WEIGHT_MAX,
    SATURATION_FREE_WEIGHT_MAX,
    RowInt8Linear,
    quantize_rows,
    rows_int8_available,
    weight_max,
)

needs_kernels = pytest.mark.skipif(
    not rows_int8_available(nn.Linear(8, 8)), reason="needs the engine's CPU kernels and AVX2"
)


@needs_kernels
def test_rows_are_rounded_with_a_scale_each() -> None:
    torch.manual_seed(0)
    x = torch.randn(37, 96) * torch.logspace(-3, 3, 37)[:, None]  # rows of very different magnitudes
    x[5] = 0.0
    q, scales = quantize_rows(x)
    amax = x.abs().amax(dim=1)
    assert q.dtype == torch.int8 and scales.dtype == torch.float32
    torch.testing.assert_close(scales, amax / 127)
    expected = torch.round(x * torch.where(amax > 0, 127 / amax, 0)[:, None])
    assert (q.int() - expected.int()).abs().max() <= 1  # x * (127 / amax) may round one ulp apart
    assert (q.int() == expected.int()).float().mean() > 0.99
    assert q.abs().amax(dim=1)[amax > 0].eq(127).all()  # each row's largest value fills the range
    assert q[5].eq(0).all() and scales[5] == 0


@needs_kernels
@pytest.mark.parametrize("with_bias", [True, False])
def test_int32_products_become_float_in_place(with_bias: bool) -> None:
    torch.manual_seed(1)
    acc = torch.randint(-(2**20), 2**20, (19, 48), dtype=torch.int32)
    rows, cols = torch.rand(19) + 0.1, torch.rand(48) + 0.1
    bias = torch.randn(48) if with_bias else None
    expected = acc.double() * rows.double()[:, None] * cols.double()[None, :]
    if bias is not None:
        expected += bias.double()
    pointer = acc.data_ptr()
    y = torch.ops.mmserve_cpu.dequantize_rows_(acc, rows, cols, bias, None, False)
    assert y.dtype == torch.float32 and y.data_ptr() == pointer  # no new memory for the result
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-3)


@needs_kernels
def test_integer_gemm_is_exact_at_this_cpus_weight_range() -> None:
    """The worst case for 16-bit pair sums: every activation and weight at the ends of its range."""
    limit = weight_max()
    torch.manual_seed(2)
    a = torch.where(torch.rand(64, 256) < 0.5, -127, 127).to(torch.int8)
    w = torch.where(torch.rand(256, 64) < 0.5, -limit, limit).to(torch.int8)
    a[:, ::2] = 127
    w[::2, :] = limit  # pairs of equal sign: the largest sums
    assert torch.equal(torch._int_mm(a, w), a.int() @ w.int())


def test_weight_range_follows_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int_matmul, "int_matmul_isa", lambda: int_matmul.INT_MATMUL_AVX512_VNNI)
    assert weight_max() == FULL_WEIGHT_MAX
    monkeypatch.setattr(int_matmul, "int_matmul_isa", lambda: int_matmul.INT_MATMUL_AVX2)
    assert weight_max() == SATURATION_FREE_WEIGHT_MAX


@needs_kernels
@pytest.mark.parametrize("limit", [SATURATION_FREE_WEIGHT_MAX, weight_max()])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_follows_float32(limit: int, bias: bool) -> None:
    torch.manual_seed(3)
    linear = nn.Linear(128, 80, bias=bias)
    layer = RowInt8Linear(linear, limit)
    assert layer.weight.dtype == torch.int8 and layer.weight.abs().max() <= limit
    x = torch.randn(2, 300, 128)
    with torch.inference_mode():
        got, want = layer(x), linear(x)
    assert got.shape == want.shape == (2, 300, 80)
    assert ((got - want).norm() / want.norm()).item() < 0.03
    # Rounding is per row: a row far larger than the others leaves their precision alone.
    x[0, 0] *= 1e4
    with torch.inference_mode():
        err = (layer(x)[0, 1:] - linear(x)[0, 1:]).norm() / linear(x)[0, 1:].norm()
    assert err.item() < 0.03


@needs_kernels
def test_gelu_and_residual_are_applied_in_the_same_pass() -> None:
    torch.manual_seed(4)
    linear = nn.Linear(64, 96)
    layer = RowInt8Linear(linear, weight_max())
    x, residual = torch.randn(50, 64), torch.randn(50, 96)
    with torch.inference_mode():
        plain = layer(x)
        torch.testing.assert_close(layer(x, gelu=True), torch.nn.functional.gelu(plain), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x, residual=residual), plain + residual, rtol=1e-5, atol=1e-5)
        both = layer(x, residual=residual, gelu=True)
        torch.testing.assert_close(both, torch.nn.functional.gelu(plain) + residual, rtol=1e-5, atol=1e-5)


def test_float32_on_a_cpu_only() -> None:
    """bf16 (and CUDA, and a CPU without the kernels) have no int8-rows path."""
    assert not rows_int8_available(nn.Linear(64, 32).to(torch.bfloat16))
    assert not rows_int8_available(nn.Identity())  # no weights at all
