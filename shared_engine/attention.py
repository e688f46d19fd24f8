"""Attention over the paged KV cache.

Layout: per layer, keys and values are ``[num_kv_heads, num_blocks, block_size, head_dim]`` tensors;
a token at position ``p`` of a request lives in slot ``block_ids[p // block_size] * block_size +
p % block_size`` of every head. The flat batch holds every decode token first (one per request), then
each prefill chunk in turn. Decodes are attended in one batched matmul over keys gathered through the
block table; each prefill chunk attends with SDPA, straight on its fresh keys when it starts at
position 0, or on keys gathered from the cache when it continues a cached prefix or earlier chunk.

Heads lead the layout so that gathering a request's blocks is one ``index_select`` of whole
``block_size x head_dim`` rows per head, and the gathered keys are already ``[heads, requests,
positions, head_dim]`` for the matmul: no transposing copy. On a CPU this made decode attention at 32
requests about 3x faster than gathering ``[blocks, block_size, heads, head_dim]`` by advanced indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class PrefillChunk:
    start: int  # offset of the chunk in the flat batch
    end: int
    num_computed: int  # tokens of this request already in the cache before the chunk
    slots: (
        torch.Tensor | None
    )  # cache slots of positions [0, num_computed + chunk); None when num_computed == 0


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] where each new token's key/value is written
    num_decodes: int
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks]
    decode_mask: torch.Tensor | None  # [1, num_decodes, 1, max_blocks * block_size], True = attend
    prefills: list[PrefillChunk]
    # Per request, in batch order (decodes, then prefill chunks): what an encoder-decoder model's
    # cross-attention reads. None entries for decoder-only models.
    encoder_states: list[Any] = field(default_factory=list)


def write_kv(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    kv_heads, head_dim = k_cache.shape[0], k_cache.shape[-1]
    k_cache.view(kv_heads, -1, head_dim).index_copy_(1, slots, key.transpose(0, 1))
    v_cache.view(kv_heads, -1, head_dim).index_copy_(1, slots, value.transpose(0, 1))


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """query ``[T, H, D]``, key/value ``[T, KVH, D]`` → ``[T, H, D]``; writes key/value to the cache."""
    write_kv(key, value, k_cache, v_cache, meta.slot_mapping)
    out = torch.empty_like(query)
    num_heads, head_dim = query.shape[1:]
    kv_heads = k_cache.shape[0]
    flat_k = k_cache.view(kv_heads, -1, head_dim)
    flat_v = v_cache.view(kv_heads, -1, head_dim)
    if meta.num_decodes:
        b = meta.num_decodes
        assert meta.decode_block_tables is not None and meta.decode_mask is not None
        blocks = meta.decode_block_tables.reshape(-1)
        length = meta.decode_block_tables.shape[1] * k_cache.shape[2]
        keys = k_cache.index_select(1, blocks).view(kv_heads, b, length, head_dim)
        values = v_cache.index_select(1, blocks).view(kv_heads, b, length, head_dim)
        # Grouped-query attention without materialising repeated keys: the query heads that share a
        # kv head are laid out as that head's extra "rows".
        q = query[:b].view(b, kv_heads, num_heads // kv_heads, head_dim).transpose(0, 1)
        scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(scale)
        scores.masked_fill_(~meta.decode_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        out[:b] = torch.matmul(probs, values).transpose(0, 1).reshape(b, num_heads, head_dim)
    for chunk in meta.prefills:
        q = query[chunk.start : chunk.end].transpose(0, 1).unsqueeze(0)
        if chunk.slots is None:
            k = key[chunk.start : chunk.end].transpose(0, 1).unsqueeze(0)
            v = value[chunk.start : chunk.end].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            k = flat_k.index_select(1, chunk.slots).unsqueeze(0)
            v = flat_v.index_select(1, chunk.slots).unsqueeze(0)
            n = chunk.end - chunk.start
            ctx = chunk.num_computed + n
            q_pos = torch.arange(chunk.num_computed, ctx, device=query.device)
            mask = torch.arange(ctx, device=query.device)[None, :] <= q_pos[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[chunk.start : chunk.end] = o.squeeze(0).transpose(0, 1)
    return out
