"""Quantizing a whole decoder (the layers themselves are in shared_engine/quantization.py): which
projections a mode can take, replacing them in place, the LM head (tied or not), and weight bytes."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn

from shared_engine.dual_linear import DualLinear, TiedQuantizedHead
from shared_engine.quantization import INT4_N_MULTIPLE, Int4Linear, Int8Linear, QuantizedLinear
from shared_engine.quantization_config import QuantizationConfig

logger = logging.getLogger(__name__)


class QuantizationSummary(NamedTuple):
    quantized: list[str]
    kept: dict[str, str]  # layer name -> why it stays in floating point


def _unfit_reason(linear: nn.Linear, config: QuantizationConfig) -> str | None:
    if config.mode != "int4":
        return None
    if linear.in_features % config.group_size:
        return f"in_features {linear.in_features} is not a multiple of group size {config.group_size}"
    if linear.out_features % INT4_N_MULTIPLE:
        return f"out_features {linear.out_features} is not a multiple of {INT4_N_MULTIPLE}"
    return None


def _quantized(linear: nn.Linear, config: QuantizationConfig) -> QuantizedLinear:
    int8_activations = config.activations == "int8"
    if config.mode == "int8":
        return Int8Linear(linear, int8_activations)
    return Int4Linear(linear, config.group_size, int8_activations)


def _tied_embedding(model: nn.Module) -> nn.Embedding | None:
    """The input embedding a model without an ``lm_head`` computes its logits with (Llama-style models keep
    it under ``model``, Whisper's decoder under ``decoder``)."""
    if getattr(model, "lm_head", None) is not None:
        return None
    for stack in ("model", "decoder"):
        embed = getattr(getattr(model, stack, None), "embed_tokens", None)
        if isinstance(embed, nn.Embedding):
            return embed
    return None


def _quantize_head(
    model: nn.Module, config: QuantizationConfig, float_packed: bool, summary: QuantizationSummary
) -> None:
    head = getattr(model, "lm_head", None)
    embed = _tied_embedding(model)
    if embed is not None:  # a projection over the embedding's own weight
        head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False, device="meta")
        head.weight = embed.weight
    if not isinstance(head, nn.Linear):
        return
    reason = _unfit_reason(head, config)
    if reason is not None:
        summary.kept["lm_head"] = reason
        return
    quantized = _quantized(head, config)
    if config.keep_float:
        quantized.float_packed = float_packed
        model.lm_head = DualLinear(quantized, head)
    else:
        model.lm_head = quantized if embed is None else TiedQuantizedHead(quantized, embed.weight)
    summary.quantized.append("lm_head")


@torch.no_grad()
def quantize_decoder(
    model: nn.Module, config: QuantizationConfig, float_packed: bool = False
) -> QuantizationSummary:
    """Replace the decoder's ``nn.Linear`` projections in place (and the LM head when asked).

    Layers whose shapes the mode cannot take stay in floating point, each one logged with the reason.
    With ``config.keep_float`` each becomes a :class:`DualLinear`, unless its kernel outruns the float
    matmul at every row count (``QuantizedLinear.outruns_float``); ``float_packed``: its float weight will be
    packed for oneDNN (``pack_linears`` after this), which moves the kernel's break-even row count.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    summary = QuantizationSummary([], {})
    dual = 0
    for name, linear in targets:
        reason = _unfit_reason(linear, config)
        if reason is not None:
            summary.kept[name] = reason
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        quantized = _quantized(linear, config)
        if config.keep_float and not quantized.outruns_float:
            quantized.float_packed = float_packed
            setattr(parent, child, DualLinear(quantized, linear))
            dual += 1
        else:
            setattr(parent, child, quantized)
        summary.quantized.append(name)
    if config.lm_head:
        _quantize_head(model, config.head, float_packed, summary)
    for name, reason in summary.kept.items():
        logger.warning("%s stays in floating point: %s", name, reason)
    logger.info(
        "quantized %d linear layers to %s%s%s%s (%d kept in floating point)",
        len(summary.quantized), config.mode,
        f" (group size {config.group_size})" if config.mode == "int4" else "",
        f", the LM head to {config.head.mode}" if config.lm_head and config.head is not config else "",
        f", float weights kept beside {dual} for larger batches" if dual else "", len(summary.kept),
    )  # fmt: skip
    return summary


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers, each tensor counted once (tied weights are shared)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
