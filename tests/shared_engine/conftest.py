"""Fixtures for the engine's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared_engine.device import CPU_BF16_ENV, cpu_bf16_native


@pytest.fixture
def disable_native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """A function that makes ``cpu_bf16_native()`` answer false for the rest of the test, as on an
    AVX2-only CPU, through its real override (``MMSERVE_CPU_BF16=0``); the detected answer returns after."""

    def disable() -> None:
        monkeypatch.setenv(CPU_BF16_ENV, "0")
        cpu_bf16_native.cache_clear()

    yield disable
    cpu_bf16_native.cache_clear()  # before monkeypatch restores the environment: the next call detects
