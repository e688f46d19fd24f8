"""The engine's own CPU kernels (``csrc/cpu_kernels.cpp``), for the operators of a decode step that ATen
runs as many small calls or slowly: attention of one new token per request straight over the paged KV
cache, the rotary embedding with the cache write, RMSNorm with the residual add fused in, SiLU times the
up projection. The same build holds the sampler's pass over a batch's logits (``csrc/sampling.cpp``), the
integer matmuls (``int_matmul``), the rounding of many rows to int8 around oneDNN's integer GEMM
(``row_int8_linear``) and the calls that run a decoder's whole layer stack
(``decode_layers``, ``whisper_decode_layers``).

Compiled on first use for the instruction set ATen itself picked on this CPU
(``torch.backends.cpu.get_cpu_capability()``: AVX-512, AVX2 or none), one build per set, with torch's
C++ extension loader (cached under ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``).
Where the build fails (no C++ compiler) or ``MMSERVE_CPU_KERNELS=0``, ``load()`` is False and callers
run their composite torch operators instead, which CUDA tensors always do.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# "0" keeps the composite torch operators (to compare, or to test that path); unset or "1" uses the kernels.
KERNELS_ENV = "MMSERVE_CPU_KERNELS"
SOURCES = tuple(
    Path(__file__).parent / "csrc" / name
    for name in (
        "cpu_kernels.cpp",
        "quantized_linear.cpp",
        "decode_layers.cpp",
        "whisper_decode_layers.cpp",
        "int8_rows.cpp",
        "sampling.cpp",
    )
)
ISA_FLAGS = {
    "AVX512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"),
    "AVX2": ("-mavx2", "-mfma", "-mf16c"),
}
# -ffast-math lets GCC vectorize expf through glibc's vector math library; the kernels never rely on
# infinities or NaN. -fopenmp: at::parallel_for runs on torch's OpenMP pool (the same libgomp).
COMMON_FLAGS = ("-O3", "-ffast-math", "-fopenmp")


@functools.cache
def load() -> bool:
    """Whether the kernels are registered as ``torch.ops.mmserve_cpu``: built (or found built) and
    loaded once per process; False, with a warning saying why, where they cannot be."""
    setting = os.environ.get(KERNELS_ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{KERNELS_ENV} must be 0 or 1, got {setting!r}")
    if setting == "0":
        logger.info("CPU kernels off (%s=0): composite torch operators", KERNELS_ENV)
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    name = f"mmserve_cpu_kernels_{capability.lower()}"
    try:
        load_extension = _extension_loader()
        from torch.utils.cpp_extension import _get_build_directory  # the folder load() builds in

        with build_lock(Path(_get_build_directory(name, verbose=False))):
            load_extension(
                name=name,
                sources=[str(source) for source in SOURCES],
                extra_cflags=[*COMMON_FLAGS, *ISA_FLAGS.get(capability, ())],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
            )
    except Exception as exc:  # a missing compiler or ninja, a failed build: all mean the fallback
        logger.warning("CPU kernels unavailable, using composite torch operators: %s", exc)
        return False
    _register_fakes()
    logger.info("CPU kernels loaded (%s build)", capability)
    return True


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold an OS lock on ``build_dir`` while torch's loader builds or loads there (other processes wait).

    torch's own lock is a file that its holder deletes when done: one killed mid-build leaves it behind,
    and every later loader polls it forever (a worker restarted after a crash never becomes ready). This
    lock dies with its holder, so while it is held any such file is a leftover, and is removed."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            leftover = build_dir / "lock"
            if leftover.exists():
                logger.warning("removing %s, left by a process that died while building", leftover)
                leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache  # once per process, however often load() is asked again
def _register_fakes() -> None:
    """Shapes without computing, so that torch.compile can trace through the kernels."""

    def mutates_only(*args: Any) -> None:
        return None

    kernels = ("paged_decode_attention", "rms_norm", "fused_add_rms_norm", "rotary_cache_write", "silu_mul")
    for name in kernels:
        torch.library.register_fake(f"mmserve_cpu::{name}", mutates_only)

    @torch.library.register_fake("mmserve_cpu::argmax_rows")
    def _(logits: torch.Tensor) -> torch.Tensor:
        return logits.new_empty(logits.shape[0], dtype=torch.long)

    @torch.library.register_fake("mmserve_cpu::softmax_head")
    def _(
        logits: torch.Tensor, inverse: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = logits.shape[0]
        return (
            logits.new_empty((rows, k)),
            logits.new_empty((rows, k), dtype=torch.long),
            logits.new_empty(rows),
        )


def _extension_loader() -> Any:
    # Importing the loader warns, on a CUDA build of torch without a CUDA toolkit, that none was found:
    # true, and irrelevant to a CPU extension.
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load as load_extension
    finally:
        extension_logger.setLevel(level)
    return load_extension


@torch.compiler.assume_constant_result  # torch.compile takes the answer as given, not tracing load()
def _loaded() -> bool:
    return load()


def usable(device: torch.device) -> bool:
    """Whether tensors on ``device`` go through the kernels."""
    return device.type == "cpu" and _loaded()


def cache_dtype_fits(compute: torch.dtype, cache: torch.dtype) -> bool:
    """Whether the kernels take a KV cache of ``cache`` dtype under queries and projections of ``compute``."""
    return cache == compute or (compute == torch.float32 and cache in (torch.bfloat16, torch.float16))


def paged_decode_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> None:
    """``out`` ``[b, heads, dim]`` = attention of ``query`` (one token per request) over the first
    ``context_lens[r]`` positions of request ``r`` in ``kv_cache``, through ``block_tables``
    ``[b, max_blocks]``."""
    torch.ops.mmserve_cpu.paged_decode_attention(out, query, kv_cache, block_tables, context_lens, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    torch.ops.mmserve_cpu.rms_norm(out, x, weight, eps)
    return out


def softmax_head(
    logits: torch.Tensor, inverse_temperatures: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``logits`` (float32 ``[rows, vocab]``; -inf masks a token): the ``k`` largest
    probabilities of ``softmax(logits * inverse_temperatures[:, None])`` in no particular order (of
    equal values the first ones), their token ids, and the probability of all other tokens together."""
    head, ids, tail = torch.ops.mmserve_cpu.softmax_head(logits.contiguous(), inverse_temperatures, k)
    return head, ids, tail


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Per row of ``logits`` (float32 ``[rows, vocab]``): the index of its largest value, the first of equal
    ones, a NaN counting as the largest (``torch.argmax``'s answer, ~3x sooner for a 49k vocabulary)."""
    result: torch.Tensor = torch.ops.mmserve_cpu.argmax_rows(logits.contiguous())
    return result


def rotary_cache_write_(
    qkv: torch.Tensor, rope: Any, kv_cache: torch.Tensor, slots: torch.Tensor, heads: int, kv_heads: int
) -> None:
    """In place on ``qkv`` ``[tokens, (heads + 2 * kv_heads) * head_dim]``: the rotary embedding of its
    query and key heads at ``rope.positions`` (float32 tables ``rope.cos_table``/``rope.signed_sin_table``,
    rotate-half convention), then each token's key and value written to its slot of ``kv_cache``."""
    torch.ops.mmserve_cpu.rotary_cache_write(
        qkv, rope.positions, rope.cos_table, rope.signed_sin_table, kv_cache, slots, heads, kv_heads
    )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up`` ``[rows, 2 * n]`` (contiguous; gate the first half), computed in
    float32: one call where ATen makes three."""
    out = gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))
    torch.ops.mmserve_cpu.silu_mul(out, gate_up)
    return out


def add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place: ``residual += x``, then ``x = rms_norm(residual) * weight``."""
    torch.ops.mmserve_cpu.fused_add_rms_norm(x, residual, weight, eps)


if __name__ == "__main__":  # `make` builds them at install time, so that no request waits for the build
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load()
