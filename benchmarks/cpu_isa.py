"""Running a benchmark as a CPU with fewer instruction sets would, on this one.

``avx2`` stands for an AVX2-only x86 CPU (AMD Zen 2/3, Intel before Ice Lake): no native bf16 for the
service (``MMSERVE_CPU_BF16=0``, so ``dtype = "auto"`` is float32), ATen's AVX2 kernels
(``ATEN_CPU_CAPABILITY``), and oneDNN, MKL and fbgemm held to AVX2; llama.cpp is built for AVX2 in a
build folder of its own. Memory bandwidth and cache sizes stay this machine's, so the figures are those
of a CPU with this one's memory and the other's instructions: compare the targets within one run.

These variables are read when torch loads, so a benchmark asked for another ISA starts itself again with
them set (:func:`reexec_as`) before doing anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ISAS = ("native", "avx2")
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "MMSERVE_CPU_BF16": "0",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
# llama.cpp's CPU backend flags per ISA (ggml's CMake options).
LLAMA_CPP_FLAGS: dict[str, tuple[str, ...]] = {
    "native": ("-DGGML_NATIVE=ON",),
    "avx2": (
        "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF",
    ),
}  # fmt: skip
# ggml's AMX matmul (b11434) crashes, SIGSEGV in ggml_backend_amx_mul_mat at the first decode, on the
# 2-core Xeon with AMX these benchmarks ran on (2026-12-04). On a CPU with AMX the native build keeps
# every other extension such a CPU has (AVX-512 with VNNI, VBMI and BF16, AVX-VNNI) and leaves AMX out.
LLAMA_CPP_NATIVE_WITHOUT_AMX = (
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
    "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)  # fmt: skip


def llama_cpp_build(isa: str) -> tuple[str, tuple[str, ...]]:
    """The build folder's suffix and the CMake flags of llama.cpp built for ``isa`` on this CPU."""
    if isa == "native" and "amx_int8" in _cpu_flags():
        return "-noamx", LLAMA_CPP_NATIVE_WITHOUT_AMX
    return ("" if isa == "native" else f"-{isa}"), LLAMA_CPP_FLAGS[isa]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def reexec_as(isa: str) -> None:
    """Return when this process already runs as ``isa``; otherwise replace it with itself, same
    arguments, under ``isa``'s environment."""
    if isa not in ISAS:
        raise ValueError(f"unknown ISA {isa!r}; known: {', '.join(ISAS)}")
    wanted = ISA_ENV[isa]
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    os.environ.update(wanted)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def simulated_isa() -> str:
    """The ISA this process runs as: ``native`` unless every variable of another is set."""
    for isa, env in ISA_ENV.items():
        if env and all(os.environ.get(k) == v for k, v in env.items()):
            return isa
    return "native"
