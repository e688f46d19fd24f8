"""The run-time device and dtype choice, and the CPU's native bf16 probe every bf16 CPU path goes by."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from shared_engine.device import CPU_BF16_ENV, cpu_bf16_native, resolve_dtype

CPU = torch.device("cpu")


def test_the_probe_never_claims_what_onednn_would_refuse() -> None:
    # Packing bf16 weights raises where oneDNN's bf16 path is missing (AVX2-only CPUs, issue 15).
    assert not cpu_bf16_native() or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_without_native_bf16_auto_picks_float32(disable_native_bf16: Callable[[], None]) -> None:
    disable_native_bf16()
    assert cpu_bf16_native() is False
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16  # asked for by name, it is still given


def test_a_bad_override_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    cpu_bf16_native.cache_clear()
    try:
        with pytest.raises(ValueError, match="MMSERVE_CPU_BF16 must be 0 or auto, got 'yes'"):
            cpu_bf16_native()
    finally:
        cpu_bf16_native.cache_clear()
