"""Whisper's encoder on int8 rows (``row_int8_linear``), over the weights of transformers' module.

What transformers' forward spends outside its matmuls — a pass over memory for each GELU, each residual
add, each reshape of the attention heads — is here folded into the pass that turns each matmul's int32
products into floats (``RowInt8Linear``'s ``gelu`` and ``residual``), and the query, key and value
projections are one matmul, their input rounded once. The arithmetic is transformers' (the same layer
norms, exact GELU, scaled dot-product attention over all 1,500 frames), with int8 matmuls.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from shared_engine.row_int8_linear import RowInt8Linear, weight_max


def _fused_qkv(attn: Any) -> nn.Linear:
    """One projection for transformers' ``q_proj``, ``k_proj`` (no bias) and ``v_proj``."""
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    d = q.in_features
    fused = nn.Linear(d, 3 * d)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        k_bias = k.bias if k.bias is not None else torch.zeros(d)
        fused.bias.copy_(torch.cat([q.bias, k_bias, v.bias]))
    return fused


class _EncoderLayer(nn.Module):
    self_attn_layer_norm: nn.LayerNorm
    final_layer_norm: nn.LayerNorm

    def __init__(self, layer: Any, heads: int, limit: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn_layer_norm = layer.self_attn_layer_norm
        self.final_layer_norm = layer.final_layer_norm
        self.qkv_proj = RowInt8Linear(_fused_qkv(layer.self_attn), limit)
        self.out_proj = RowInt8Linear(layer.self_attn.out_proj, limit)
        self.fc1 = RowInt8Linear(layer.fc1, limit)
        self.fc2 = RowInt8Linear(layer.fc2, limit)

    def forward(self, h: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """``h``: ``[batch * frames, d]``, contiguous."""
        d = h.shape[1]
        qkv = self.qkv_proj(self.self_attn_layer_norm(h)).view(batch, frames, 3, self.heads, d // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch * frames, d)
        h = self.out_proj(attention, residual=h)
        return self.fc2(self.fc1(self.final_layer_norm(h), gelu=True), residual=h)


class Int8RowsWhisperEncoder(nn.Module):
    """``encoder`` (transformers' ``WhisperEncoder``, float32 on a CPU where ``rows_int8_available``)
    as int8 rows, in its place: log-mel ``[B, mels, 3000]`` → ``last_hidden_state`` ``[B, 1500, d]``."""

    conv1: nn.Conv1d
    conv2: nn.Conv1d
    layer_norm: nn.LayerNorm
    positions: torch.Tensor

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        limit = weight_max()
        heads = encoder.config.encoder_attention_heads
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.register_buffer("positions", encoder.embed_positions.weight.detach().clone())
        self.layers = nn.ModuleList(_EncoderLayer(layer, heads, limit) for layer in encoder.layers)
        self.layer_norm = encoder.layer_norm

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor) -> BaseModelOutput:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))  # [B, d, frames]
        batch, d, frames = x.shape
        h = (x.transpose(1, 2) + self.positions[:frames]).reshape(batch * frames, d).contiguous()
        for layer in self.layers:
            h = cast(_EncoderLayer, layer)(h, batch, frames)
        return BaseModelOutput(last_hidden_state=self.layer_norm(h).view(batch, frames, d))
