"""Build an engine model from a Hugging Face config and safetensors weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from shared_engine.kernel_rows import calibrate_kernel_rows
from shared_engine.models.base import MODEL_REGISTRY, DecoderArch, DecoderModel
from shared_engine.packed_linear import pack_linears, packing_applies
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.quantize_model import quantize_decoder


def arch_from_hf_config(cfg: Any) -> DecoderArch:
    architectures = getattr(cfg, "architectures", None) or []
    if not architectures:
        raise ValueError("config.json names no architecture")
    name = architectures[0]
    MODEL_REGISTRY.get(name)  # fail early, listing what is supported
    if getattr(cfg, "model_type", None) == "whisper":
        return _whisper_arch(name, cfg)
    num_heads = cfg.num_attention_heads
    return DecoderArch(
        architecture=name,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or num_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama has them only when attention_bias says so.
        qkv_bias=name == "Qwen2ForCausalLM" or bool(getattr(cfg, "attention_bias", False)),
        hf_config=cfg,
    )


def _whisper_arch(name: str, cfg: Any) -> DecoderArch:
    """The decoder half of a Whisper model (its encoder runs outside the engine)."""
    heads = cfg.decoder_attention_heads
    return DecoderArch(
        architecture=name,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.decoder_ffn_dim,
        num_layers=cfg.decoder_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=cfg.d_model // heads,
        rms_norm_eps=1e-5,  # LayerNorm epsilon, as in the reference implementation
        max_position_embeddings=cfg.max_target_positions,
        tie_word_embeddings=True,
        qkv_bias=True,
        hf_config=cfg,
        is_encoder_decoder=True,
    )


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def build_decoder(
    hf_config: Any,
    weights: Iterator[tuple[str, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    quantization: QuantizationConfig | None = None,
) -> DecoderModel:
    arch = arch_from_hf_config(hf_config)
    cls = MODEL_REGISTRY.get(arch.architecture)
    model = cls(arch)
    model.load_weights(weights)
    model.to(device=device, dtype=dtype).eval()
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None:
        # RoPE tables stay float32: positions far from 0 lose precision in bf16.
        rotary.float()
    packing = packing_applies(device, dtype)
    quantization = quantization.for_device(device) if quantization is not None else None
    if quantization is not None:
        quantize_decoder(model, quantization, packing)  # on the target device: int4 packs for its kernel
    if packing:
        pack_linears(model)  # what quantization left in floating point
    if quantization is not None and device.type == "cpu":
        calibrate_kernel_rows(model, dtype)
    return model
