"""A Llama-family decoder's layer stack at a step of decode tokens only, in one call of the engine's CPU
kernels (``csrc/decode_layers.cpp``), from the step's token ids (their embeddings and the first norm too)
to the final norm's output.

The layers' modules call the same kernels in the same order (so the results are the same), but through
~15 Python-level operator calls a layer; at one request on two cores those cost about a third of the
step. The call serves a step when every projection of every layer runs the engine's int4 kernel at the
step's rows (``quantization = "auto"`` or ``"int4"`` on a CPU with AVX2), the KV cache is read by the
decode-attention kernel, and no ``float_weights_only`` is active; the modules serve every other step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shared_engine import cpu_kernels
from shared_engine.attention import AttentionMetadata
from shared_engine.dual_linear import DualLinear, float_weights_forced
from shared_engine.quantization import UNLIMITED_ROWS, Int4Linear, QuantizedLinear

logger = logging.getLogger(__name__)


class KernelRowLimit:
    """The most rows at which every one of ``layers`` (the quantized halves of dual layers) takes its
    kernel rather than its float weight, per input dtype, looked up once each."""

    def __init__(self, layers: Sequence[QuantizedLinear]) -> None:
        self._layers = layers
        self._limits: dict[torch.dtype, int] = {}

    def __call__(self, x: torch.Tensor) -> int:
        limit = self._limits.get(x.dtype)
        if limit is None:
            limit = min((p.kernel_rows(x) for p in self._layers), default=UNLIMITED_ROWS)
            self._limits[x.dtype] = limit
        return limit


def decode_only_step(
    x: torch.Tensor, meta: AttentionMetadata, kv_caches: list[torch.Tensor], dtype: torch.dtype, rows: int
) -> bool:
    """Whether a layer-stack call computes this step as the modules would: decode tokens only (``x``: one
    row or token id each) attending through the CPU kernel over a KV cache that ``dtype`` (the stack's)
    can read, at most ``rows`` of them, no float weights forced and nothing being traced. The caller
    checks that ``x`` itself fits the stack."""
    return (
        not meta.prefills
        and meta.num_decodes == x.shape[0]
        and meta.decode_gather_index is None
        and cpu_kernels.usable(x.device)
        and cpu_kernels.cache_dtype_fits(dtype, kv_caches[0].dtype)
        and x.shape[0] <= rows
        and not float_weights_forced()
        and not torch.compiler.is_compiling()
    )


def _int4_kernel_layer(module: nn.Module) -> tuple[Int4Linear, bool] | None:
    """The engine-kernel int4 layer behind a projection, and whether a float partner takes over at more
    rows (a DualLinear), or None where the projection is anything else."""
    dual = isinstance(module, DualLinear)
    layer = module.quantized if isinstance(module, DualLinear) else module
    if isinstance(layer, Int4Linear) and layer.engine_kernel:
        return layer, dual
    return None


class DecodeLayers:
    """The layer stack's weights in the kernel's order, and the shapes it needs; built by ``plan``."""

    def __init__(
        self,
        embedding: nn.Embedding,
        layers: Sequence[Any],
        final_norm: Any,
        projections: list[tuple[Int4Linear, bool]],
    ):
        attention = layers[0].self_attn
        self.dtype = final_norm.weight.dtype
        group, isa = projections[0][0].group_size, projections[0][0].engine_isa
        self.row_limit = KernelRowLimit([layer for layer, dual in projections if dual])
        empty = final_norm.weight.new_empty(0)
        self._probe = empty  # the row limit's question: rows of the stack's dtype
        weights: list[torch.Tensor] = []
        next_norms = [layer.input_layernorm for layer in layers[1:]] + [final_norm]
        for index, (layer, next_norm) in enumerate(zip(layers, next_norms, strict=True)):
            qkv, o, gate_up, down = (p for p, _ in projections[4 * index : 4 * index + 4])
            weights += [qkv.weight, qkv.scales_and_zeros, empty if qkv.bias is None else qkv.bias]
            for p in (o, gate_up, down):
                weights += [p.weight, p.scales_and_zeros]
            weights += [layer.post_attention_layernorm.weight, next_norm.weight]
        self.weights = weights
        self.embedding, self.first_norm = embedding.weight, layers[0].input_layernorm.weight
        # The kernel's own object: the weights checked once, and passed to each step as one argument.
        self.stack = torch.classes.mmserve_cpu.LayerStack(
            self.embedding, self.first_norm, weights, attention.num_heads, attention.num_kv_heads,
            attention.head_dim, attention.scale, final_norm.eps, group, isa,
        )  # fmt: skip
        self._op = torch.ops.mmserve_cpu.decode_layers

    @classmethod
    def plan(cls, embedding: nn.Module, layers: Sequence[Any], final_norm: Any) -> DecodeLayers | None:
        """The stack's call, or None where some projection is not an int4 layer on the engine's kernel,
        they differ in group size or instruction set, a projection other than qkv has a bias, the norms
        differ in epsilon, or the token embedding is not a plain table."""
        if type(embedding) is not nn.Embedding or embedding.max_norm is not None:
            return None
        norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if len({n.eps for n in [*norms, final_norm]}) != 1:
            return None
        projections = []
        for layer in layers:
            attention, mlp = layer.self_attn, layer.mlp
            for module in (attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj):
                found = _int4_kernel_layer(module)
                if found is None:
                    return None
                projections.append(found)
        if not projections or len({(p.group_size, p.engine_isa) for p, _ in projections}) != 1:
            return None
        if any(p.bias is not None for i, (p, _) in enumerate(projections) if i % 4):
            return None
        try:
            return cls(embedding, layers, final_norm, projections)
        except RuntimeError as exc:  # the kernel's checks refused these weights: the modules serve
            logger.warning("decode steps go through the layers' modules: %s", exc)
            return None

    def serves(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: list[torch.Tensor]) -> bool:
        """Whether this step (of ``input_ids``) is one the call computes as the modules would."""
        return decode_only_step(input_ids, meta, kv_caches, self.dtype, self.row_limit(self._probe))

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        rotary_tables: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor:
        """The final norm's output for the tokens ``input_ids`` at ``positions``; ``rotary_tables``: the
        float32 cos and signed sin of every position."""
        cos, signed_sin = rotary_tables
        return self._op(
            self.stack, input_ids, kv_caches, positions, cos, signed_sin,
            meta.slot_mapping, meta.decode_block_tables, meta.decode_lens,
        )  # fmt: skip
