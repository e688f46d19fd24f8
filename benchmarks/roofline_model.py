"""What one decode token of the chat model costs in arithmetic: the weight matrices it is multiplied by
(as the model applies them), its parameter counts, and the attention over the KV cache left out of both."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Projection = tuple[Callable[[torch.Tensor], torch.Tensor], int, int]  # apply, in_features, out_features


def projections(model: Any) -> list[Projection]:
    """Every matrix a decode token is multiplied by, as the model itself applies it (plain
    ``nn.Linear``, oneDNN-packed or quantized layers): ``(apply, in_features, out_features)`` of each
    layer's projections, then of the LM head (the tied embedding matrix when the model has no head)."""
    layers = [
        m for name, m in model.named_modules() if hasattr(m, "in_features") and not name.startswith("lm_head")
    ]
    head = getattr(model, "lm_head", None)
    embed = model.model.embed_tokens.weight
    apply_head = head if head is not None else functools.partial(F.linear, weight=embed)
    return [(m, m.in_features, m.out_features) for m in layers] + [(apply_head, *reversed(embed.shape))]


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
