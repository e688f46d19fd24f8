"""The row limit of dual layers, measured when a model is built: which counts are tried, what stops the
search, that every layer of a group gets the limit and answers by it, and that a process measures a set
of shapes once. The clock is replaced by fixed costs here: which path is faster on a given CPU is the
benchmarks' business (benchmarks/serving.py), not a unit test's."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from shared_engine import kernel_rows
from shared_engine.dual_linear import DualLinear
from shared_engine.quantization import Int4Linear, Int8Linear

BF16 = torch.bfloat16


class _Model(nn.Module):
    """Two projections and an LM head, each quantized with its float weight kept, on ATen's kernels (the
    engine's int4 kernel as AVX2 outruns float weights at every row count: no limit to measure)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        up, down, head = nn.Linear(64, 128, bias=False), nn.Linear(128, 64, bias=False), nn.Linear(64, 96)
        self.layers = nn.ModuleList(
            [DualLinear(Int4Linear(lin, 32, int8_activations=False), lin.to(BF16)) for lin in (up, down)]
        )
        self.lm_head = DualLinear(Int8Linear(head, int8_activations=False), head.to(BF16))


def _costs(monkeypatch: pytest.MonkeyPatch, kernel_wins_up_to: int) -> list[tuple[int, int]]:
    """Put a stand-in for ``pass_seconds`` in place, under which the kernels are faster up to
    ``kernel_wins_up_to`` rows; the passes it is asked for: (layers, rows)."""
    calls: list[tuple[int, int]] = []

    def pass_seconds(
        layers: Sequence[DualLinear], inputs: dict[int, torch.Tensor], rows: int, through_kernel: bool
    ) -> float:
        calls.append((len(layers), rows))
        assert all(inputs[d.quantized.in_features].shape[0] >= rows for d in layers)
        return (0.5 if rows <= kernel_wins_up_to else 2.0) if through_kernel else 1.0

    monkeypatch.setattr(kernel_rows, "pass_seconds", pass_seconds)
    return calls


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> _Model:
    monkeypatch.setattr(kernel_rows, "_measured", {})
    return _Model()


def _limit(layer: DualLinear) -> int:
    return layer.quantized.kernel_rows(torch.empty(1, layer.quantized.in_features, dtype=BF16))


def test_the_limit_is_the_most_rows_at_which_the_kernels_win(
    model: _Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = _limit(model.layers[0])
    calls = _costs(monkeypatch, kernel_wins_up_to=20)
    limits = kernel_rows.calibrate_kernel_rows(model, BF16)
    assert limits["projections"] == 16  # 24 rows was the first count the kernels lost at
    tried = sorted({rows for layers, rows in calls if layers == len(model.layers)})
    assert tried[0] > preset and 24 in tried and 32 not in tried  # above the preset, up to the first loss
    assert all(_limit(layer) == 16 for layer in model.layers)
    layer = model.layers[0]
    with torch.inference_mode():
        at, past = torch.randn(16, 64, dtype=BF16), torch.randn(17, 64, dtype=BF16)
        assert torch.equal(layer(at), layer.quantized.kernel_forward(at))
        assert torch.equal(layer(past), layer.float_linear(past))


def test_a_kernel_that_loses_at_once_keeps_the_preset_limit(
    model: _Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = _limit(model.layers[0])
    _costs(monkeypatch, kernel_wins_up_to=0)
    assert kernel_rows.calibrate_kernel_rows(model, BF16)["projections"] == preset
    assert all(_limit(layer) == preset for layer in model.layers)


def test_the_search_stops_at_the_rows_a_kernel_serves_at_all(
    model: _Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 kernel serves a bf16 head up to 8 rows however fast it is."""
    _costs(monkeypatch, kernel_wins_up_to=1000)
    limits = kernel_rows.calibrate_kernel_rows(model, BF16)
    assert limits == {"projections": max(kernel_rows.CANDIDATE_ROWS), "lm_head": 8}
    assert _limit(model.lm_head) == 8


def test_a_process_measures_a_set_of_shapes_once(model: _Model, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _costs(monkeypatch, kernel_wins_up_to=20)
    first = kernel_rows.calibrate_kernel_rows(model, BF16)
    measured = len(calls)
    again = _Model()
    assert _limit(again.layers[0]) != 16  # a new model starts from the preset
    assert kernel_rows.calibrate_kernel_rows(again, BF16) == first
    assert len(calls) == measured and all(_limit(layer) == 16 for layer in again.layers)


def test_the_real_clock_gives_every_layer_of_a_group_one_limit(model: _Model) -> None:
    limits = kernel_rows.calibrate_kernel_rows(model, BF16)
    assert set(limits) == {"projections", "lm_head"}
    assert _limit(model.layers[0]) == _limit(model.layers[1]) == limits["projections"] >= 1
    assert limits["projections"] <= max(kernel_rows.CANDIDATE_ROWS) and limits["lm_head"] <= 8
