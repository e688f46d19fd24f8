"""What one decode token of the chat model costs in arithmetic: the weight matrices it is multiplied by
(as the model applies them), its parameter counts, and the attention over the KV cache left out of both."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared_engine.dual_linear import DualLinear, TiedQuantizedHead
from shared_engine.packed_linear import PackedLinear
from shared_engine.quantization import QuantizedLinear

Projection = tuple[Callable[[torch.Tensor], torch.Tensor], int, int]  # apply, in_features, out_features


def _projection_modules(model: Any) -> list[tuple[str, nn.Module]]:
    """The modules the model calls as its projections: a dual layer (quantized + float) is one, not its
    two halves."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if name.startswith("lm_head") or any(name.startswith(f"{n}.") for n, _ in found):
            continue
        if isinstance(m, DualLinear) or hasattr(m, "in_features"):
            found.append((name, m))
    return found


def _features(m: nn.Module) -> tuple[int, int]:
    inner = m.quantized if isinstance(m, DualLinear) else m
    return int(inner.in_features), int(inner.out_features)


def projections(model: Any) -> list[Projection]:
    """Every matrix a decode token is multiplied by, as the model itself applies it (plain
    ``nn.Linear``, oneDNN-packed, quantized or dual layers): ``(apply, in_features, out_features)`` of each
    layer's projections, then of the LM head (the tied embedding matrix when the model has no head)."""
    layers = [(m, *_features(m)) for _, m in _projection_modules(model)]
    head = getattr(model, "lm_head", None)
    embed = model.model.embed_tokens.weight
    apply_head = head if head is not None else functools.partial(F.linear, weight=embed)
    return [*layers, (apply_head, *reversed(embed.shape))]


def _tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _bytes_read(m: Any, rows: int, dtype: torch.dtype) -> int:
    """Bytes of weight (and scales) one call of ``m`` with ``rows`` rows reads, by the path it takes."""
    if isinstance(m, (DualLinear, TiedQuantizedHead)):
        x = torch.empty(rows, m.quantized.in_features, dtype=dtype)
        if m.quantized.beats_float(x):
            return _bytes_read(m.quantized, rows, dtype)
        return _bytes_read(m.float_linear if isinstance(m, DualLinear) else m.float_weight, rows, dtype)
    if isinstance(m, torch.Tensor):
        return _tensor_bytes(m)
    if isinstance(m, QuantizedLinear):
        return _tensor_bytes(*m.buffers())
    if isinstance(m, PackedLinear):
        return _tensor_bytes(m.packed)
    return _tensor_bytes(m.weight)


def weight_bytes_read(model: Any, rows: int, dtype: torch.dtype) -> int:
    """Bytes of weights a forward of ``rows`` tokens reads: every projection by the path it takes at that
    many rows (a quantized copy or the float weight), and the LM head. What bounds a decode step from
    below at memory bandwidth."""
    total = sum(_bytes_read(m, rows, dtype) for _, m in _projection_modules(model))
    head = getattr(model, "lm_head", None)
    return total + _bytes_read(head if head is not None else model.model.embed_tokens.weight, rows, dtype)


def param_counts(model: Any) -> dict[str, int]:
    matrices = projections(model)
    arch = model.arch
    embed = model.model.embed_tokens.weight
    head = arch.vocab_size * arch.hidden_size
    layers = sum(i * o for _, i, o in matrices[:-1])
    # What stays a 1-d parameter once the projections are packed: the norms (and any biases)
    others = sum(p.numel() for name, p in model.named_parameters() if p is not embed and p.dim() == 1)
    non_embedding = layers + others
    return {
        # unique parameters: a tied embedding counts once
        "total": non_embedding + head * (1 if arch.tie_word_embeddings else 2),
        "non_embedding": non_embedding,  # without the embedding and the LM head
        "lm_head": head,
        "matmul": layers + head,  # what 2 x params x tok/s counts
    }


def attention_flops(arch: Any, context: float) -> float:
    """FLOPs of one token's attention over ``context`` cached tokens: QK^T and PV in every layer."""
    return 4 * arch.num_layers * arch.num_heads * arch.head_dim * context
