"""Device and dtype chosen at run time: CUDA when present, else CPU; bf16 where the hardware has it."""

from __future__ import annotations

import functools
import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# "0" turns the CPU's native bf16 off (to test the fallback, or rule it out); unset or "auto" detects it.
CPU_BF16_ENV = "MMSERVE_CPU_BF16"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively: the one answer every bf16 CPU path goes by.

    Native means bf16 instructions (AVX-512 BF16, which CPUs with AMX have too; without them bf16
    matmuls are emulated and slower than float32) and oneDNN's bf16 path (AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT; without it oneDNN refuses to pack bf16 weights). An AVX2-only CPU such as AMD
    Zen 2/3 has neither. Where this is false, ``auto`` picks float32 and bf16 models run unpacked.

    ``MMSERVE_CPU_BF16=0`` makes it false whatever the CPU. Read on the first call and kept (tests
    that change it call ``cpu_bf16_native.cache_clear()``).
    """
    override = os.environ.get(CPU_BF16_ENV, "auto")
    if override not in ("auto", "0"):
        raise ValueError(f"{CPU_BF16_ENV} must be 0 or auto, got {override!r}")
    if override == "0" or not torch.backends.mkldnn.is_available():
        return False
    return torch.cpu._is_avx512_bf16_supported() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: auto, {', '.join(DTYPES)}")
    return DTYPES[name]
