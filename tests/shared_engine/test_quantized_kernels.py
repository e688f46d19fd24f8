"""The engine's integer matmuls (csrc/quantized_linear.cpp), int4 and int8 weights x int8 activations:
their weight layouts, their arithmetic on every instruction set this CPU has (AVX-512 VNNI and AVX2 on
an AVX-512 machine, AVX2 alone elsewhere), and the layers falling back to ATen's kernels where they
cannot run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared_engine import cpu_kernels, int_matmul
from shared_engine.dual_linear import DualLinear, TiedQuantizedHead, float32_output, float_weights_only
from shared_engine.int_weights import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from shared_engine.quantization import Int4Linear, Int8Linear

ISAS = {"avx2": int_matmul.INT_MATMUL_AVX2, "avx512-vnni": int_matmul.INT_MATMUL_AVX512_VNNI}


def _supported(isa: int) -> bool:
    return cpu_kernels.load() and bool(torch.ops.mmserve_cpu.int_matmul_supported(isa))


def _int4_weight(n: int, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed weight, packed scales and zeros, and the float32 weight they stand for."""
    torch.manual_seed(n * 7 + k)
    q = quantize_int4(torch.randn(n, k) * 0.05, group, torch.float16)
    packed, scales_zeros = int_matmul.pack_int4(q.weight, q.scales_and_zeros)
    return packed, scales_zeros, dequantize_int4(q, group, torch.float32)


def _int8_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """``x`` rounded as the kernel rounds it: symmetric int8 per group, values x * (127 / max |x|)."""
    groups = x.float().view(x.shape[0], -1, group)
    amax = groups.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(groups * inverse) * (amax / 127)).view(x.shape[0], -1)


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("rows", "n", "k", "group"),
    [
        (1, 16, 32, 32), (3, 960, 576, 32), (5, 48, 1536, 64), (9, 32, 256, 128), (2, 64, 512, 256),
        (70, 96, 576, 32), (131, 32, 1536, 32), (67, 16, 256, 64), (2, 32, 192, 24), (3, 16, 64, 8),
    ],
)  # fmt: skip
def test_int4_linear_computes_int8_rows_times_the_dequantized_weight(
    isa: str, dtype: torch.dtype, rows: int, n: int, k: int, group: int
) -> None:
    """Every row tile (1-4 rows a pass on AVX-512, 1-2 on AVX2, with remainders), every group size (those
    of 8 and 24 rounded without whole vectors of 16), and on AVX2 the many-rows kernel (from 64 rows in
    groups of 32; its tiles of 1-4 rows, chunks of 128): the same numbers as rounding the rows to int8 and
    multiplying by the dequantized weight in float64."""
    if not _supported(ISAS[isa]):
        pytest.skip(f"this CPU has no {isa}")
    packed, scales_zeros, weight = _int4_weight(n, k, group)
    x = torch.randn(rows, k).to(dtype)
    x[0, :group] = 0  # an all-zero group has scale 0, not a division by zero
    # A group whose largest magnitude is 127 rounds its values as they are: halves to the even neighbour.
    x[-1, -4:] = torch.tensor([127.0, 2.5, -3.5, 0.5])
    got = torch.ops.mmserve_cpu.int4_linear(x, packed, scales_zeros, group, ISAS[isa])
    want = _int8_rows(x, group).double() @ weight.double().t()
    assert got.dtype == dtype and got.shape == (rows, n)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.double(), want, atol=tol * want.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_rows_come_out_the_same_however_many_are_computed_together(dtype: torch.dtype) -> None:
    """AVX2 computes many rows with another kernel than few (weights widened once per block); both take
    the same integer sums through the same float steps, so a row's result does not depend on its batch:
    a prompt recomputed in part after a prefix-cache hit, or a request decoded beside others, gives the
    very numbers it gave alone."""
    isa = int_matmul.INT_MATMUL_AVX2
    if not _supported(isa):
        pytest.skip("this CPU has no AVX2")
    packed, scales_zeros, _ = _int4_weight(64, 576, 32)
    x = torch.randn(200, 576).to(dtype)
    together = torch.ops.mmserve_cpu.int4_linear(x, packed, scales_zeros, 32, isa)
    for rows in (1, 3, 8, 63):
        apart = torch.cat(
            [
                torch.ops.mmserve_cpu.int4_linear(x[i : i + rows].contiguous(), packed, scales_zeros, 32, isa)
                for i in range(0, 200, rows)
            ]
        )
        assert torch.equal(together, apart), rows


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 16, 32), (3, 4096, 576), (5, 48, 384), (9, 32, 64)])
def test_int8_linear_computes_int8_rows_times_the_dequantized_weight(
    isa: str, dtype: torch.dtype, rows: int, n: int, k: int
) -> None:
    """Negative weights and activations included (|w| times x with w's sign), every row tile."""
    if not _supported(ISAS[isa]):
        pytest.skip(f"this CPU has no {isa}")
    torch.manual_seed(n + k)
    q = quantize_int8(torch.randn(n, k) * 0.05, torch.float32)
    packed = int_matmul.pack_int8(q.weight)
    assert torch.equal(int_matmul.unpack_int8(packed), q.weight)
    x = torch.randn(rows, k).to(dtype)
    x[0, :32] = 0
    got = torch.ops.mmserve_cpu.int8_linear(x, packed, q.scales, int_matmul.INT8_ACTIVATION_GROUP, ISAS[isa])
    want = _int8_rows(x, int_matmul.INT8_ACTIVATION_GROUP).double() @ dequantize_int8(q, torch.float64).t()
    assert got.dtype == dtype and got.shape == (rows, n)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.double(), want, atol=tol * want.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [1, 3, 9])
def test_int8_linear_gives_its_float32_sums_unrounded_where_asked(
    isa: str, dtype: torch.dtype, rows: int
) -> None:
    """An LM head's logits: the same sums, rounded to x's dtype by the default call and not by float_out."""
    if not _supported(ISAS[isa]):
        pytest.skip(f"this CPU has no {isa}")
    torch.manual_seed(rows)
    q = quantize_int8(torch.randn(64, 576) * 0.05, torch.float32)
    packed = int_matmul.pack_int8(q.weight)
    x = torch.randn(rows, 576).to(dtype)
    rounded = int_matmul.int8_linear(x, packed, q.scales, ISAS[isa])
    sums = int_matmul.int8_linear(x, packed, q.scales, ISAS[isa], float_out=True)
    assert sums.dtype == torch.float32 and rounded.dtype == dtype and sums.shape == (rows, 64)
    assert torch.equal(sums.to(dtype), rounded)
    if dtype == torch.bfloat16:
        assert not torch.equal(sums, rounded.float())  # the default's rounding is not there


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
def test_an_int8_head_s_float32_logits_are_its_outputs_before_rounding(isa: str) -> None:
    """Through the layers an LM head is (plain, tied, dual): float32 from the kernel at a decode step's
    rows, the float matmul's widened output past its row limit; a Whisper-sized head's padding cut."""
    if not _supported(ISAS[isa]):
        pytest.skip(f"this CPU has no {isa}")
    torch.manual_seed(0)
    linear = nn.Linear(64, 1000, bias=False).to(torch.bfloat16)
    layer = Int8Linear(linear)
    layer.engine_isa = ISAS[isa]
    head = DualLinear(layer, linear)
    tied = TiedQuantizedHead(layer, linear.weight)
    for module in (layer, head, tied):
        for rows in (1, 4, 40):
            x = torch.randn(rows, 64).to(torch.bfloat16)
            logits = float32_output(module, x)
            assert logits.dtype == torch.float32 and logits.shape == (rows, 1000)
            assert torch.equal(logits.to(torch.bfloat16), module(x))
            # Up to 4 rows (the bf16 row limit) the kernel's own sums, not their bf16 rounding widened.
            assert torch.equal(logits, module(x).float()) == (rows > 4)
            if module is not layer:  # a plain quantized layer has no float weights to take
                with float_weights_only():  # the float weights, as forward takes them
                    assert torch.equal(float32_output(module, x), module(x).float())


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
def test_an_int8_head_s_bias_is_added_to_its_float32_sums(isa: str) -> None:
    if not _supported(ISAS[isa]):
        pytest.skip(f"this CPU has no {isa}")
    torch.manual_seed(1)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    layer = Int8Linear(linear)
    layer.engine_isa = ISAS[isa]
    x = torch.randn(2, 64).to(torch.bfloat16)
    sums = int_matmul.int8_linear(x, layer.weight, layer.scales, ISAS[isa], float_out=True)
    assert layer.bias is not None
    assert torch.equal(float32_output(layer, x), sums + layer.bias.float())


def test_the_layout_puts_four_features_of_sixteen_rows_in_each_nibble_plane() -> None:
    values = torch.randint(0, 16, (32, 16), dtype=torch.uint8)
    scales_and_zeros = torch.randn(16 // 8, 32, 2)
    packed, scales_zeros = int_matmul.pack_int4(values, scales_and_zeros)
    assert packed.shape == (2, 2, 64) and scales_zeros.shape == (2, 2, 2, 16)
    for block in range(2):
        for step in range(2):
            for row in range(16):
                for i in range(4):
                    byte = int(packed[block, step, 4 * row + i])
                    assert byte & 0xF == values[16 * block + row, 8 * step + i]
                    assert byte >> 4 == values[16 * block + row, 8 * step + 4 + i]
    for g in range(2):
        assert torch.equal(scales_zeros[:, g, 0].flatten(), scales_and_zeros[g, :, 0].half())
        assert torch.equal(scales_zeros[:, g, 1].flatten(), scales_and_zeros[g, :, 1].half())


def test_bad_arguments_are_refused_with_what_is_wrong() -> None:
    if not _supported(int_matmul.INT_MATMUL_AVX2):
        pytest.skip("this CPU has no AVX2")
    packed, scales_zeros, _ = _int4_weight(16, 64, 32)
    run = torch.ops.mmserve_cpu.int4_linear
    with pytest.raises(RuntimeError, match="packed weight must be uint8"):
        run(torch.randn(1, 32), packed, scales_zeros, 32, int_matmul.INT_MATMUL_AVX2)
    with pytest.raises(RuntimeError, match="scales_zeros must be float16"):
        run(torch.randn(1, 64), packed, scales_zeros.float(), 32, int_matmul.INT_MATMUL_AVX2)
    with pytest.raises(RuntimeError, match="unknown instruction set"):
        run(torch.randn(1, 64), packed, scales_zeros, 32, 7)
    with pytest.raises(ValueError, match="out_features % 16"):
        int_matmul.pack_int4(torch.zeros(8, 64, dtype=torch.uint8), torch.zeros(2, 8, 2))
    int8 = int_matmul.pack_int8(torch.zeros(16, 64, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="scales must be float32"):
        torch.ops.mmserve_cpu.int8_linear(torch.randn(1, 64), int8, torch.ones(16).half(), 32, 1)
    with pytest.raises(RuntimeError, match="in_features must be a multiple of the group size"):
        torch.ops.mmserve_cpu.int8_linear(torch.randn(1, 64), int8, torch.ones(16), 48, 1)


def test_the_isa_follows_aten_s_capability_and_the_cpu() -> None:
    isa = int_matmul.int_matmul_isa()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512" and _supported(int_matmul.INT_MATMUL_AVX512_VNNI):
        assert isa == int_matmul.INT_MATMUL_AVX512_VNNI
    elif capability in ("AVX512", "AVX2"):
        assert isa == int_matmul.INT_MATMUL_AVX2
    else:
        assert isa is None


def _layer(n: int, k: int, dtype: torch.dtype) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(k, n, bias=True)
    return layer.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_without_the_engine_s_kernel_int4_layers_use_aten_s(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """A CPU without AVX2 (or without the kernels): layers pack for ATen's int4 kernel, scales in bf16,
    rows unrounded; both layers stay as close to the float layer as int4 allows."""
    layer = _layer(64, 128, dtype)
    x = torch.randn(3, 128).to(dtype)
    monkeypatch.setattr(int_matmul, "int_matmul_isa", lambda: None)
    aten = Int4Linear(layer, 32)
    assert aten.cpu_packed and not aten.engine_kernel and aten.scales_and_zeros.dtype == torch.bfloat16
    monkeypatch.undo()
    with torch.inference_mode():
        got = aten(x).float()
        exact = (
            x.float()
            @ dequantize_int4(quantize_int4(layer.weight.detach(), 32, torch.bfloat16), 32, torch.float32).t()
            + layer.bias.float()
        )
    torch.testing.assert_close(got, exact, rtol=0.02, atol=0.02)
    with torch.inference_mode():
        float_rows = layer(x).float()
        assert ((got - float_rows).norm() / float_rows.norm()).item() < 0.1
        if int_matmul.int_matmul_isa() is not None:
            engine = Int4Linear(layer, 32)
            assert engine.engine_kernel and engine.scales_and_zeros.dtype == torch.float16
            assert ((engine(x).float() - float_rows).norm() / float_rows.norm()).item() < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_layers_take_the_engine_s_kernel_for_few_rows_and_dequantize_for_many(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    layer = _layer(64, 128, dtype)
    engine = Int8Linear(layer)
    if int_matmul.int_matmul_isa() is None:
        pytest.skip("the engine's integer kernels do not run on this CPU")
    assert (
        engine.engine_kernel and engine.weight.shape == (4, 32, 64) and engine.scales.dtype == torch.float32
    )
    monkeypatch.setattr(int_matmul, "int_matmul_isa", lambda: None)
    aten = Int8Linear(layer)
    assert not aten.engine_kernel and aten.weight.shape == (64, 128)
    for rows in (2, 200):  # the kernel, then dequantize-then-matmul through the unpacked layout
        x = torch.randn(rows, 128).to(dtype)
        with torch.inference_mode():
            want = layer(x).float()
            for q in (engine, aten):
                assert ((q(x).float() - want).norm() / want.norm()).item() < 0.03


def test_int8_layers_of_any_width_take_the_engine_s_kernel() -> None:
    """Output features padded to the kernel's block of 16 (Whisper's head has 51,865), cut from results."""
    if int_matmul.int_matmul_isa() is None:
        pytest.skip("the engine's integer kernels do not run on this CPU")
    layer = _layer(50, 128, torch.float32)
    engine = Int8Linear(layer)
    assert engine.engine_kernel and engine.weight.shape == (4, 32, 64) and engine.scales.shape == (64,)
    for rows in (1, 3, 200):  # the kernel, then dequantize-then-matmul
        x = torch.randn(rows, 128)
        with torch.inference_mode():
            want, got = layer(x), engine(x)
        assert got.shape == (rows, 50) and got.is_contiguous()
        assert ((got - want).norm() / want.norm()).item() < 0.03


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_only_layers_keep_their_inputs_in_float(bits: int) -> None:
    """``activations = "float"`` (what Whisper's decoder runs): torch's kernels, no int8 rounding."""
    linear = _layer(64, 128, torch.float32)
    layer = Int4Linear(linear, 32, int8_activations=False) if bits == 4 else Int8Linear(linear, False)
    assert not layer.engine_kernel and layer.weight.dtype in (torch.uint8, torch.int8, torch.int32)
    x = torch.randn(3, 128)
    with torch.inference_mode():
        want = layer(x).float()
        assert ((want - linear(x)).norm() / linear(x).norm()).item() < 0.1


@pytest.mark.parametrize("bits", [4, 8])
def test_the_integer_kernels_trace_into_one_graph(bits: int) -> None:
    if int_matmul.int_matmul_isa() is None:
        pytest.skip("the engine's integer kernels do not run on this CPU")
    linear = _layer(32, 64, torch.float32)
    layer = Int4Linear(linear, 32) if bits == 4 else Int8Linear(linear)
    assert layer.engine_kernel
    compiled = torch.compile(layer.kernel_forward, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 64)
    with torch.inference_mode():
        assert torch.equal(compiled(x), layer.kernel_forward(x))
