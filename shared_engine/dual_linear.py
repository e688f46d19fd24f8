"""Quantized projections that keep a floating-point path: an LM head tied to the input embedding, and a
projection held both quantized and in floating point. Each call takes the weight-only kernel where it is
faster (decode at small batch sizes, bound by reading weights) and the float matmul elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from shared_engine.quantization import QuantizedLinear

_FLOAT_ONLY: ContextVar[bool] = ContextVar("mmserve_float_weights_only", default=False)


@contextmanager
def float_weights_only(active: bool = True) -> Iterator[None]:
    """While active, every :class:`DualLinear` and :class:`TiedQuantizedHead` takes its float weight whatever
    the rows. The model runner sets it for steps that compute prompt tokens: a prompt's last few tokens,
    recomputed after a prefix cache hit, would otherwise take the quantized kernel where the full prompt
    took the float weights, and a seeded request would not repeat itself (the engine's kernels round
    inputs to int8); and for a prompt's scores, which must not depend on how many rows are scored at once."""
    token = _FLOAT_ONLY.set(active)
    try:
        yield
    finally:
        _FLOAT_ONLY.reset(token)


def float_weights_forced() -> bool:
    """Whether ``float_weights_only`` is active here."""
    return _FLOAT_ONLY.get()


class TiedQuantizedHead(nn.Module):
    """An LM head tied to the input embedding, which must stay in floating point for lookups: a
    quantized copy serves the calls where its kernel is faster (decode at small batch), the shared
    float weight all others, so the copy costs memory but never speed."""

    def __init__(self, quantized: QuantizedLinear, float_weight: torch.Tensor) -> None:
        super().__init__()
        self.quantized = quantized
        self.float_weight = float_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _FLOAT_ONLY.get() and self.quantized.beats_float(x):
            return self.quantized(x)
        return F.linear(x, self.float_weight)

    def float32_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with float32 results: the quantized kernel's own where it serves ``x``."""
        if not _FLOAT_ONLY.get() and self.quantized.beats_float(x):
            return self.quantized.float32_forward(x)
        return F.linear(x, self.float_weight).float()


class DualLinear(nn.Module):
    """A projection kept twice: quantized, for the calls whose rows the weight-only kernel serves faster
    (decode at small batch, where a step's time is reading weights, and int4 reads a quarter of bf16's
    bytes), and in floating point for the others (a float GEMM wins from a few rows on). Quantization's
    speed at one request without its cost at many, for the memory of both copies.

    It is called a hundred times a decode step, so the row limit is looked up once per input dtype and
    the kernel is called without ``QuantizedLinear.forward``'s reshaping and checks: 27 -> 15 us a call
    at one row of SmolLM2's qkv projection, of which the kernel takes 14."""

    def __init__(self, quantized: QuantizedLinear, linear: nn.Linear) -> None:
        super().__init__()
        self.quantized = quantized
        self.float_linear = linear  # an nn.Linear until pack_linears packs it
        self._kernel_rows: dict[torch.dtype, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _FLOAT_ONLY.get():
            return self.float_linear(x)
        if x.dim() == 2:
            kernel = x.shape[0] <= self._row_limit(x)
            return self.quantized.kernel_forward(x) if kernel else self.float_linear(x)
        return self.quantized(x) if self.quantized.beats_float(x) else self.float_linear(x)

    def float32_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with float32 results (an LM head's logits): the quantized kernel's own where it
        serves ``x``."""
        if not _FLOAT_ONLY.get() and x.dim() == 2 and x.shape[0] <= self._row_limit(x):
            return self.quantized.float32_forward(x)
        return self(x).float()

    def _row_limit(self, x: torch.Tensor) -> int:
        limit = self._kernel_rows.get(x.dtype)
        if limit is None:
            limit = self._kernel_rows[x.dtype] = self.quantized.kernel_rows(x)
        return limit


def float32_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as float32 (an LM head's logits), a quantized module's kernel writing them itself."""
    if isinstance(module, (DualLinear, TiedQuantizedHead, QuantizedLinear)):
        return module.float32_forward(x)
    return module(x).float()
