"""The ``opaque-attention`` compile variant: the whole forward compiled, with paged attention (the KV
write and the cache gather) and the oneDNN-packed linear layers as custom operators that inductor calls
but does not look into — vLLM's piecewise compilation, on the CPU.

Attention reads its step's metadata from a context set around each call (:func:`attention_context`),
not from its arguments, so the graph holds only tensors of fixed shape per batch size and compiles once
per decode batch size, whatever the context lengths; it writes the KV cache in place, so inductor never
copies the cache (what a traced ``index_copy_`` made it do). The packed linears are opaque because
inductor cannot lower ``mkldnn._linear_pointwise`` on weights packed outside its own freezing pass.
Nothing here changes the engine: the swaps hold only while a variant's forward runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import shared_engine.models.llama as llama
from shared_engine.attention import AttentionMetadata, paged_attention
from shared_engine.packed_linear import PackedLinear

_step: dict[str, AttentionMetadata] = {}


@torch.library.custom_op("mmserve_bench::paged_attention", mutates_args=())
def _opaque_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    scale: float,
    kv_written: bool,
) -> torch.Tensor:
    # kv_cache is written in place but not declared mutated: declaring it would make inductor copy it.
    meta = _step["meta"]
    return paged_attention(query, key.contiguous(), value.contiguous(), kv_cache, meta, scale, kv_written)


@_opaque_attention.register_fake
def _(query: torch.Tensor, *rest: object) -> torch.Tensor:
    return torch.empty_like(query)


@torch.library.custom_op("mmserve_bench::packed_linear", mutates_args=())
def _opaque_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out: int
) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@_opaque_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out))


def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    kv_written: bool = False,
) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mmserve_bench.paged_attention(
        query, key, value, kv_cache, scale, kv_written
    )
    return out


def _linear(self: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mmserve_bench.packed_linear(x, self.packed, self.bias, self.out_features)
    return out


@contextmanager
def attention_context(meta: AttentionMetadata) -> Iterator[None]:
    """While it holds: attention and packed linears are the opaque operators, ``meta`` the step's."""
    saved: dict[str, Any] = {"attention": llama.paged_attention, "linear": PackedLinear.forward}
    _step["meta"] = meta
    llama.paged_attention = _attention
    PackedLinear.forward = _linear  # type: ignore[method-assign]
    try:
        yield
    finally:
        llama.paged_attention = saved["attention"]
        PackedLinear.forward = saved["linear"]  # type: ignore[method-assign]
        _step.clear()
