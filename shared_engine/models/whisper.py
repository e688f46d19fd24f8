"""Whisper's decoder on the engine's paged KV cache, with cross-attention over per-request encoder output.

Self-attention keys and values live in the paged cache like any decoder's. Cross-attention keys and
values depend only on the encoder output, so they are computed once per request
(:meth:`WhisperDecoder.cross_attention_kv`, batched with the encoder) and travel with the request as
its ``encoder_state``. Every request has the same number of encoder frames (Whisper always sees
30 s), but stacking them per step would copy megabytes per layer; each request's rows attend to its
own keys and values instead.

Parameter names follow Hugging Face's ``model.decoder.*`` so checkpoints load as they are, except
that q/k/v of self-attention are fused into one matrix (Whisper's key projection has no bias: its
part of the fused bias stays zero).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from shared_engine import cpu_kernels
from shared_engine.attention import AttentionMetadata, paged_attention
from shared_engine.dual_linear import DualLinear, float32_output
from shared_engine.models.base import MODEL_REGISTRY, DecoderArch
from shared_engine.row_int8_linear import RowInt8Linear, rows_int8_available, weight_max
from shared_engine.whisper_decode_layers import WhisperDecodeLayers


@dataclass(frozen=True)
class CrossAttentionState:
    """One request's cross-attention keys and values, per layer, each ``[2, heads, 1, frames, head_dim]``:
    the paged KV cache's layout with all frames in one block, so that a decode row attends through the
    same CPU kernel as self-attention."""

    kv: tuple[torch.Tensor, ...]


class SelfAttention(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.num_heads, self.head_dim = arch.num_heads, arch.head_dim
        self.qkv_proj = nn.Linear(arch.hidden_size, 3 * arch.hidden_size, bias=True)
        self.out_proj = nn.Linear(arch.hidden_size, arch.hidden_size)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = (part.view(t, self.num_heads, self.head_dim) for part in self.qkv_proj(x).chunk(3, dim=-1))
        out = paged_attention(q, k, v, kv_cache, meta, self.head_dim**-0.5)
        return self.out_proj(out.reshape(t, -1))


class CrossAttention(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.num_heads, self.head_dim = arch.num_heads, arch.head_dim
        self.q_proj = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.k_proj = nn.Linear(arch.hidden_size, arch.hidden_size, bias=False)
        self.v_proj = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.out_proj = nn.Linear(arch.hidden_size, arch.hidden_size)

    def project_kv(self, encoder_hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[B, frames, d]`` → keys and values ``[B, 2, heads, 1, frames, head_dim]`` in ``dtype``."""
        b, frames, _ = encoder_hidden.shape
        k = self.k_proj(encoder_hidden).view(b, frames, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoder_hidden).view(b, frames, self.num_heads, self.head_dim).transpose(1, 2)
        return torch.stack([k, v], dim=1).unsqueeze(3).to(dtype).contiguous()

    def forward(
        self, x: torch.Tensor, spans: Sequence[tuple[int, int]], kv: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        q = self.q_proj(x).view(x.shape[0], self.num_heads, self.head_dim)
        out = torch.empty_like(q)
        kernel = (
            cpu_kernels.usable(x.device) and bool(kv) and cpu_kernels.cache_dtype_fits(q.dtype, kv[0].dtype)
        )
        one_block = torch.zeros(1, 1, dtype=torch.long) if kernel else None  # every frame in block 0
        frames: dict[int, torch.Tensor] = {}  # context lengths, as the kernel takes them
        for (start, end), layer_kv in zip(spans, kv, strict=True):
            if one_block is not None and end - start == 1:  # a decode row: 3x faster than SDPA for it
                n = layer_kv.shape[3]
                lens = frames.get(n)
                if lens is None:
                    lens = frames[n] = torch.tensor([n])
                cpu_kernels.paged_decode_attention(
                    out[start:end], q[start:end], layer_kv, one_block, lens, self.head_dim**-0.5
                )
                continue
            rows = q[start:end].transpose(0, 1)  # [heads, n, head_dim]
            k, v = layer_kv[0, :, 0].to(q.dtype), layer_kv[1, :, 0].to(q.dtype)
            out[start:end] = F.scaled_dot_product_attention(rows, k, v).transpose(0, 1)
        return self.out_proj(out.reshape(x.shape[0], -1))


class DecoderLayer(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        d = arch.hidden_size
        self.self_attn = SelfAttention(arch)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = CrossAttention(arch)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, arch.intermediate_size)
        self.fc2 = nn.Linear(arch.intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(
        self,
        h: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
        spans: Sequence[tuple[int, int]],
        cross_kv: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        h = h + self.self_attn(self.self_attn_layer_norm(h), meta, kv_cache)
        h = h + self.encoder_attn(self.encoder_attn_layer_norm(h), spans, cross_kv)
        return h + self.fc2(F.gelu(self.fc1(self.final_layer_norm(h))))


class Decoder(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.embed_positions = nn.Embedding(arch.max_position_embeddings, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_layers))
        self.layer_norm = nn.LayerNorm(arch.hidden_size)

    def typed_layers(self) -> list[DecoderLayer]:
        return [cast(DecoderLayer, layer) for layer in self.layers]


def _row_spans(meta: AttentionMetadata) -> list[tuple[int, int]]:
    """Each request's rows in the flat batch: one per decode, then each prefill chunk."""
    spans = [(i, i + 1) for i in range(meta.num_decodes)]
    spans.extend((c.start, c.end) for c in meta.prefills)
    return spans


@MODEL_REGISTRY.register("WhisperForConditionalGeneration")
class WhisperDecoder(nn.Module):
    _prefix = "model.decoder."
    # Decode-only steps through the layers' single kernel call where it serves them (set False to
    # compare with the modules).
    fused_decode = True

    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.arch = arch
        self.decoder = Decoder(arch)

    @functools.cached_property
    def decode_layers(self) -> WhisperDecodeLayers | None:
        """The layers' kernel call, planned at the first forward: a model's modules are final once it is
        built (``build_decoder`` quantizes before returning it)."""
        return WhisperDecodeLayers.plan(self.decoder.typed_layers(), self.decoder.layer_norm)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor:
        states: list[CrossAttentionState] = meta.encoder_states
        if len(states) != meta.num_decodes + len(meta.prefills) or any(s is None for s in states):
            raise ValueError("every request of an encoder-decoder batch needs its encoder state")
        spans = _row_spans(meta)
        d = self.decoder
        h = d.embed_tokens(input_ids) + d.embed_positions(positions)
        fused = self.decode_layers if self.fused_decode else None
        if fused is not None and fused.serves(h, meta, kv_caches):
            return fused(h, meta, kv_caches)
        for i, (layer, kv_cache) in enumerate(zip(d.layers, kv_caches, strict=True)):
            h = layer(h, meta, kv_cache, spans, [s.kv[i] for s in states])
        return d.layer_norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The head is tied to the embedding; it has a module of its own only when quantization gave it one.
        head = getattr(self, "lm_head", None)
        if head is not None:
            return float32_output(head, hidden)
        return F.linear(hidden, self.decoder.embed_tokens.weight).float()

    def round_cross_projection_rows(self) -> int:
        """Put the cross-attention key and value projections, which only ever see an encoder's frames
        (1,500 rows a window), on int8 weights with inputs rounded per row (``row_int8_linear``), where
        that path runs; how many were replaced. A :class:`DualLinear` there gives up its weight-only copy,
        which no call of that many rows takes."""
        if not rows_int8_available(self):
            return 0
        limit = weight_max()
        replaced = 0
        for layer in self.decoder.typed_layers():
            attn = layer.encoder_attn
            for name in ("k_proj", "v_proj"):
                module = getattr(attn, name)
                linear = module.float_linear if isinstance(module, DualLinear) else module
                if isinstance(linear, nn.Linear):
                    setattr(attn, name, RowInt8Linear(linear, limit))
                    replaced += 1
        return replaced

    @torch.inference_mode()
    def cross_attention_kv(
        self, encoder_hidden: torch.Tensor, dtype: torch.dtype | None = None
    ) -> list[CrossAttentionState]:
        """Encoder output ``[B, frames, d]`` → one :class:`CrossAttentionState` per batch row, its keys and
        values stored in ``dtype`` (default: the encoder output's), as the engine's KV cache stores its own
        (``attention.kv_cache_dtype``): a float32 model's decode rows then read half the bytes."""
        dtype = dtype or encoder_hidden.dtype
        layers = self.decoder.typed_layers()
        per_layer = [layer.encoder_attn.project_kv(encoder_hidden, dtype) for layer in layers]
        return [CrossAttentionState(tuple(kv[b] for kv in per_layer)) for b in range(encoder_hidden.shape[0])]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the decoder half of a Hugging Face Whisper state dict in (encoder tensors are skipped)."""
        params = dict(self.named_parameters())
        d = self.arch.hidden_size
        fused = {"q_proj": 0, "k_proj": d, "v_proj": 2 * d}
        loaded: set[str] = set()
        with torch.no_grad():
            for layer in self.decoder.typed_layers():
                layer.self_attn.qkv_proj.bias.zero_()
            for name, tensor in weights:
                if not name.startswith(self._prefix):
                    continue  # the encoder, and proj_out (tied to embed_tokens)
                target, offset = name[len("model.") :], None
                for part, off in fused.items():
                    if f".self_attn.{part}." in target:
                        target, offset = target.replace(part, "qkv_proj"), off
                if target not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in the Whisper decoder")
                dst = params[target] if offset is None else params[target].narrow(0, offset, d)
                if dst.shape != tensor.shape:
                    raise ValueError(
                        f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(dst.shape)}"
                    )
                dst.copy_(tensor)
                loaded.add(f"{target}@{offset}")
        # Fused q/k/v weights come in three parts; the fused bias in two (no key bias).
        expected = sum(
            3 if n.endswith("qkv_proj.weight") else 2 if n.endswith("qkv_proj.bias") else 1 for n in params
        )
        if len(loaded) != expected:
            raise ValueError(f"checkpoint is missing decoder tensors: loaded {len(loaded)} of {expected}")
