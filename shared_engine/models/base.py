"""What every decoder architecture gives the model runner."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from shared_engine.attention import AttentionMetadata
from shared_engine.registry import Registry


@dataclass(frozen=True)
class DecoderArch:
    """The shape facts of a decoder-only transformer, read from its Hugging Face config."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    hf_config: Any  # kept for RoPE variants, which transformers knows how to parametrise
    # Cross-attention over per-request encoder output (Request.encoder_state), e.g. Whisper's decoder.
    is_encoder_decoder: bool = False

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V over all layers for one token, per byte of dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


class DecoderModel(Protocol):
    arch: DecoderArch

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor: ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...


MODEL_REGISTRY: Registry[type] = Registry("architecture")
