"""Llama-family decoders (Llama, Qwen2) on the engine's paged KV cache.

Parameter names follow Hugging Face's so checkpoints load as they are, except that q/k/v and
gate/up are each fused into one matrix: fewer, larger matmuls per layer, which on a CPU or at small
batch sizes is where decode time goes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from shared_engine import cpu_kernels
from shared_engine.attention import AttentionMetadata, paged_attention
from shared_engine.decode_layers import DecodeLayers
from shared_engine.dual_linear import float32_output
from shared_engine.models.base import MODEL_REGISTRY, DecoderArch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def _kernel_fits(self, x: torch.Tensor) -> bool:
        return (
            cpu_kernels.usable(x.device)
            and x.dim() == 2
            and x.is_contiguous()
            and x.dtype == self.weight.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_fits(x):
            return cpu_kernels.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual + x`` normalised, and that sum: the next residual. Reuses (overwrites) ``x`` and
        ``residual``, which the caller no longer needs."""
        if self._kernel_fits(x) and residual.is_contiguous() and residual.dtype == x.dtype:
            cpu_kernels.add_rms_norm_(x, residual, self.weight, self.eps)
            return x, residual
        residual = residual + x
        return F.rms_norm(residual, self.weight.shape, self.weight, self.eps), residual


def inverse_frequencies(arch: DecoderArch) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies and cos/sin scaling for any RoPE type transformers knows."""
    cfg = arch.hf_config
    params: dict[str, Any] = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        exponents = torch.arange(0, arch.head_dim, 2, dtype=torch.float) / arch.head_dim
        return 1.0 / (base**exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(
            f"unsupported rope_type {rope_type!r}; known: default, {', '.join(ROPE_INIT_FUNCTIONS)}"
        )
    if rope_type in ("dynamic", "longrope"):
        raise ValueError(f"rope_type {rope_type!r} changes with sequence length and is not supported")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, torch.device("cpu"))
    return inv_freq, float(scaling)


class Rope(NamedTuple):
    """One forward's rotary embedding: what the composite path multiplies by, and what the CPU kernel
    looks up itself."""

    cos: torch.Tensor  # [tokens, 1, head_dim], the model's dtype
    signed_sin: torch.Tensor
    positions: torch.Tensor  # [tokens] int64
    cos_table: torch.Tensor  # [max_positions, head_dim] float32
    signed_sin_table: torch.Tensor


class RotaryEmbedding(nn.Module):
    """RoPE in the rotate-half convention, as ``x * cos + roll(x, d/2) * signed_sin``: rolling the
    last dimension by half swaps its halves, and the first half of ``signed_sin`` is negated, which
    together give ``rotate_half(x) * sin`` in one roll and one fused multiply-add."""

    cos: torch.Tensor
    signed_sin: torch.Tensor

    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        inv_freq, scaling = inverse_frequencies(arch)
        positions = torch.arange(arch.max_position_embeddings, dtype=torch.float)
        freqs = positions[:, None] * inv_freq[None, :]
        self.register_buffer("cos", torch.cat((freqs, freqs), dim=-1).cos() * scaling, persistent=False)
        sin = freqs.sin() * scaling
        self.register_buffer("signed_sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> RotaryEmbedding:
        # Module.to(dtype) would round the tables: they follow the model's device but stay float32.
        tables = self.cos, self.signed_sin
        super()._apply(fn, recurse)
        self.cos, self.signed_sin = (table.to(self.cos.device) for table in tables)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        """The embedding at ``positions``: looked up once per forward, used by every layer."""
        return Rope(
            self.cos[positions].to(dtype).unsqueeze(1),
            self.signed_sin[positions].to(dtype).unsqueeze(1),
            positions,
            self.cos,
            self.signed_sin,
        )


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate ``x`` ``[tokens, heads, head_dim]`` (queries and keys together, one op chain)."""
    return torch.addcmul(x * rope.cos, x.roll(x.shape[-1] // 2, dims=-1), rope.signed_sin)


class Attention(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.q_size = arch.num_heads * arch.head_dim
        self.kv_size = arch.num_kv_heads * arch.head_dim
        self.scale = arch.head_dim**-0.5
        self.qkv_proj = nn.Linear(arch.hidden_size, self.q_size + 2 * self.kv_size, bias=arch.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, arch.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata, kv_cache: torch.Tensor
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        if (
            cpu_kernels.usable(qkv.device)
            and qkv.dim() == 2
            and qkv.is_contiguous()
            and cpu_kernels.cache_dtype_fits(qkv.dtype, kv_cache.dtype)
        ):
            # Rotary embedding and the cache write in one call, in place on the projection.
            cpu_kernels.rotary_cache_write_(
                qkv, rope, kv_cache, meta.slot_mapping, self.num_heads, self.num_kv_heads
            )
            q, k, v = qkv.view(t, -1, self.head_dim).split(
                [self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1
            )
            out = paged_attention(q, k, v, kv_cache, meta, self.scale, kv_written=True)
            return self.o_proj(out.reshape(t, self.q_size))
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = apply_rotary(qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim), rope)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.intermediate_size = arch.intermediate_size
        self.gate_up_proj = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=False)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if cpu_kernels.usable(gate_up.device) and gate_up.dim() == 2 and gate_up.is_contiguous():
            return self.down_proj(cpu_kernels.silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.mlp = MLP(arch)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        rope: Rope,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` is this layer's input normalised, ``residual`` the un-normalised stream; returns the
        MLP's output and the stream before it is added, so that the next norm fuses the add."""
        x, residual = self.post_attention_layernorm.add_forward(
            self.self_attn(x, rope, meta, kv_cache), residual
        )
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(arch)


@MODEL_REGISTRY.register("LlamaForCausalLM", "Qwen2ForCausalLM")
class LlamaForCausalLM(nn.Module):
    # Decode-only steps through the layer stack's single kernel call where it serves them (set False to
    # compare with the modules).
    fused_decode = True

    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.arch = arch
        self.model = LlamaModel(arch)
        if not arch.tie_word_embeddings:
            self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)

    @functools.cached_property
    def decode_layers(self) -> DecodeLayers | None:
        """The layer stack's kernel call, planned at the first forward: a model's modules are final once
        it is built (``build_decoder`` quantizes and packs before returning it)."""
        return DecodeLayers.plan(self.model.embed_tokens, list(self.model.layers), self.model.norm)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor:
        m = self.model
        fused = self.decode_layers if self.fused_decode else None
        if fused is not None and fused.serves(input_ids, meta, kv_caches):
            return fused(input_ids, positions, (m.rotary_emb.cos, m.rotary_emb.signed_sin), meta, kv_caches)
        residual = m.embed_tokens(input_ids)
        rope = m.rotary_emb(positions, residual.dtype)
        layers = cast(list[DecoderLayer], list(m.layers))
        x = layers[0].input_layernorm(residual)
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches, strict=True)):
            x, residual = layer(x, residual, rope, meta, kv_cache)
            norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else m.norm
            x, residual = norm.add_forward(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # A tied model has an lm_head only when quantization or packing gave it its own copy.
        head = getattr(self, "lm_head", None)
        if head is not None:
            return float32_output(head, hidden)
        return F.linear(hidden, self.model.embed_tokens.weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy a Hugging Face state dict in, fusing q/k/v and gate/up as it goes."""
        params = dict(self.named_parameters())
        a = self.arch
        q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        fused = {
            "q_proj": ("qkv_proj", 0, q),
            "k_proj": ("qkv_proj", q, kv),
            "v_proj": ("qkv_proj", q + kv, kv),
            "gate_proj": ("gate_up_proj", 0, a.intermediate_size),
            "up_proj": ("gate_up_proj", a.intermediate_size, a.intermediate_size),
        }
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "lm_head.weight" and a.tie_word_embeddings:
                continue
            if "rotary_emb" in name:
                continue
            target, offset, size = name, 0, None
            for part, (fused_name, off, length) in fused.items():
                if f".{part}." in name:
                    target, offset, size = name.replace(part, fused_name), off, length
                    break
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {a.architecture}")
            param = params[target]
            with torch.no_grad():
                dst = param if size is None else param.narrow(0, offset, size)
                if dst.shape != tensor.shape:
                    raise ValueError(
                        f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(dst.shape)}"
                    )
                dst.copy_(tensor)
            loaded.add(f"{target}@{offset}")
        expected = sum(3 if ".qkv_proj." in n else 2 if ".gate_up_proj." in n else 1 for n in params)
        if len(loaded) != expected:
            raise ValueError(f"checkpoint is missing tensors: loaded {len(loaded)} of {expected}")
