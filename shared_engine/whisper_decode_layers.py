"""Whisper's decoder layers at a step of decode tokens only, in one call of the engine's CPU kernels
(``csrc/whisper_decode_layers.cpp``).

The layers' modules run the same operators in the same order (so the results are the same), but through
~40 Python-level operator calls a layer: with Whisper's few small layers those are a third of a decode
step. The call serves a step when every projection is a float ``nn.Linear`` or an int8 layer with its
float weights kept (``quantization_keep_float``, what models.toml configures) taking its kernel at the
step's rows, the caches are read by the decode-attention kernel, and no ``float_weights_only`` is active;
the modules serve every other step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shared_engine import cpu_kernels
from shared_engine.attention import AttentionMetadata
from shared_engine.decode_layers import KernelRowLimit, decode_only_step
from shared_engine.dual_linear import DualLinear
from shared_engine.int_matmul import INT8_ACTIVATION_GROUP
from shared_engine.quantization import Int8Linear


def _projection(module: nn.Module) -> tuple[list[torch.Tensor], Int8Linear | None] | None:
    """A projection's weight, scales (empty for a float one) and bias (empty if none), and the int8 layer
    whose row limit applies; None for anything the call does not compute as the module does."""
    if type(module) is nn.Linear:
        empty = module.weight.new_empty(0)
        return [module.weight, empty, empty if module.bias is None else module.bias], None
    if isinstance(module, DualLinear) and isinstance(module.quantized, Int8Linear):
        layer = module.quantized
        bias = layer.scales.new_empty(0) if layer.bias is None else layer.bias
        return [layer.weight, layer.scales, bias], layer
    return None


class WhisperDecodeLayers:
    """The layers' weights in the kernel's order and what the call needs; built by ``plan``."""

    def __init__(self, weights: list[torch.Tensor], int8: list[Int8Linear], heads: int, eps: float):
        self.weights, self.heads, self.eps = weights, heads, eps
        # The instruction set of the engine's int8 kernel, for the layers on it (all on one CPU alike).
        self.isa = max((layer.engine_isa for layer in int8), default=0)
        self.dtype = weights[-1].dtype
        self.row_limit = KernelRowLimit(int8)

    @classmethod
    def plan(cls, layers: Sequence[Any], final_norm: nn.LayerNorm) -> WhisperDecodeLayers | None:
        """The layers' call, or None where a projection is neither a float ``nn.Linear`` nor an int8 layer
        with its float weight kept, or the norms lack a bias or differ in epsilon."""
        weights: list[torch.Tensor] = []
        int8: list[Int8Linear] = []
        norms = [final_norm]
        for layer in layers:
            s, c = layer.self_attn, layer.encoder_attn
            groups = (
                (s.qkv_proj, s.out_proj, layer.self_attn_layer_norm),
                (c.q_proj, c.out_proj, layer.encoder_attn_layer_norm),
                (layer.fc1, layer.fc2, layer.final_layer_norm),
            )
            for first, second, norm in groups:
                for module in (first, second):
                    found = _projection(module)
                    if found is None:
                        return None
                    weights += found[0]
                    int8 += [found[1]] if found[1] is not None else []
                weights += [norm.weight, norm.bias]
                norms.append(norm)
        weights += [final_norm.weight, final_norm.bias]
        if not layers or len({n.eps for n in norms}) != 1 or any(n.bias is None for n in norms):
            return None
        return cls(weights, int8, layers[0].self_attn.num_heads, final_norm.eps)

    def serves(self, h: torch.Tensor, meta: AttentionMetadata, kv_caches: list[torch.Tensor]) -> bool:
        """Whether this step (embedded tokens ``h``) is one the call computes as the modules would."""
        return (
            h.dtype == self.dtype
            and decode_only_step(h, meta, kv_caches, self.dtype, self.row_limit(h))
            and all(cpu_kernels.cache_dtype_fits(h.dtype, s.kv[0].dtype) for s in meta.encoder_states)
        )

    def __call__(
        self, h: torch.Tensor, meta: AttentionMetadata, kv_caches: list[torch.Tensor]
    ) -> torch.Tensor:
        """The final norm's output for the embedded tokens ``h``."""
        states = meta.encoder_states
        cross = [state.kv[layer] for layer in range(len(kv_caches)) for state in states]
        head_dim = h.shape[1] // self.heads
        return torch.ops.mmserve_cpu.whisper_decode_layers(
            h, self.weights, kv_caches, cross, meta.slot_mapping, meta.decode_block_tables, meta.decode_lens,
            self.heads, head_dim**-0.5, self.eps, INT8_ACTIVATION_GROUP, self.isa,
        )  # fmt: skip
