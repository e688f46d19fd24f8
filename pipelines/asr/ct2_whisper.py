"""CTranslate2's ``WhisperSpec`` variables as a Hugging Face ``WhisperForConditionalGeneration``.

This undoes ctranslate2's ``WhisperLoader``, which fuses q/k/v of self-attention into one
``linear_0`` and k/v of cross-attention into ``linear_1``, and stores layer norms as gamma/beta.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from numpy.typing import NDArray
from transformers import WhisperConfig

from pipelines.asr.ct2_format import CT2Model

Tensors = dict[str, NDArray[Any]]

WHISPER_SPEC = "WhisperSpec"
WHISPER_SPEC_REVISION = 3
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU


def dequantized(model: CT2Model, name: str) -> NDArray[Any]:
    """Variable ``name`` as floats: float ones as stored, int8/int16 ones divided by their ``_scale``."""
    value = model.get(name)
    if value.dtype.kind == "f":
        return value
    if name + "_zero" in model.variables:
        raise ValueError(f"{name} uses zero-point quantization, which this converter does not read")
    scale = model.get(name + "_scale").astype(np.float32)
    # CTranslate2 stores round(w * scale): one scale per output row for int8, one in all for int16.
    shape = (-1,) + (1,) * (value.ndim - 1) if scale.ndim else ()
    return value.astype(np.float32) / scale.reshape(shape)


def _layer_norm(model: CT2Model, src: str, dst: str, out: Tensors) -> None:
    out[f"{dst}.weight"] = dequantized(model, f"{src}/gamma")
    out[f"{dst}.bias"] = dequantized(model, f"{src}/beta")


def _linear(model: CT2Model, src: str, dst: str, out: Tensors) -> None:
    out[f"{dst}.weight"] = dequantized(model, f"{src}/weight")
    out[f"{dst}.bias"] = dequantized(model, f"{src}/bias")


def _split_linear(model: CT2Model, src: str, dst: str, names: tuple[str, ...], out: Tensors) -> None:
    """Split a fused projection into ``names`` (Whisper's ``k_proj`` has no bias: its part must be 0)."""
    weight, bias = dequantized(model, f"{src}/weight"), dequantized(model, f"{src}/bias")
    if weight.shape[0] % len(names) or bias.shape != weight.shape[:1]:
        raise ValueError(f"{src} of shape {weight.shape} does not split into {', '.join(names)}")
    for name, w, b in zip(names, np.split(weight, len(names)), np.split(bias, len(names)), strict=True):
        out[f"{dst}.{name}.weight"] = w
        if name != "k_proj":
            out[f"{dst}.{name}.bias"] = b
        elif np.any(b):
            raise ValueError(f"{src}: the key projection has a non-zero bias, which Whisper's k_proj lacks")


def _layer(model: CT2Model, src: str, dst: str, out: Tensors) -> None:
    _split_linear(
        model, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), out
    )
    _linear(model, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", out)
    _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
    if dst.startswith("model.decoder"):
        _linear(model, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", out)
        _split_linear(model, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"), out)
        _linear(model, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", out)
        _layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
    _linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1", out)
    _linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2", out)
    _layer_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", out)


def num_layers(model: CT2Model, stack: str) -> int:
    """How many ``{stack}/layer_N`` blocks the model has (checked to be numbered 0..N-1)."""
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    found = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if found != set(range(len(found))):
        raise ValueError(f"{stack} layers are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def is_tied(model: CT2Model) -> bool:
    """Whether the output projection is the token embedding (as in every released Whisper)."""
    if "decoder/projection/bias" in model.variables:
        raise ValueError("decoder/projection has a bias, which Whisper's proj_out lacks")
    embeddings, projection = model.get("decoder/embeddings/weight"), model.get("decoder/projection/weight")
    return projection is embeddings or np.array_equal(projection, embeddings)


def whisper_state_dict(model: CT2Model) -> Tensors:
    """Hugging Face parameter names to arrays (views into the CT2 data where no math was needed)."""
    check_whisper_spec(model)
    out: Tensors = {}
    for stack in ("encoder", "decoder"):
        for i in range(num_layers(model, stack)):
            _layer(model, f"{stack}/layer_{i}", f"model.{stack}.layers.{i}", out)
        _layer_norm(model, f"{stack}/layer_norm", f"model.{stack}.layer_norm", out)
        out[f"model.{stack}.embed_positions.weight"] = dequantized(
            model, f"{stack}/position_encodings/encodings"
        )
    for conv in ("conv1", "conv2"):
        _linear(model, f"encoder/{conv}", f"model.encoder.{conv}", out)
    out["model.decoder.embed_tokens.weight"] = dequantized(model, "decoder/embeddings/weight")
    if not is_tied(model):
        out["proj_out.weight"] = dequantized(model, "decoder/projection/weight")
    return out


def check_whisper_spec(model: CT2Model) -> None:
    """Reject specs and variants whose layout the mapping above does not describe."""
    if (model.spec_name, model.spec_revision) != (WHISPER_SPEC, WHISPER_SPEC_REVISION):
        raise ValueError(
            f"expected a {WHISPER_SPEC} revision {WHISPER_SPEC_REVISION} model, got "
            f"{model.spec_name} revision {model.spec_revision}"
        )
    if model.scalar("decoder/activation") != _GELU or not model.scalar("decoder/pre_norm"):
        raise ValueError("the decoder is not a pre-norm GELU Transformer, as Whisper's is")


def whisper_config(model: CT2Model, token_ids: dict[str, Any]) -> WhisperConfig:
    """The architecture, read from tensor shapes and the spec's scalars (``token_ids`` from the tokenizer)."""
    vocab_size, d_model = model.get("decoder/embeddings/weight").shape
    return WhisperConfig(
        architectures=["WhisperForConditionalGeneration"],
        vocab_size=vocab_size,
        d_model=d_model,
        num_mel_bins=model.get("encoder/conv1/weight").shape[1],
        encoder_layers=num_layers(model, "encoder"),
        decoder_layers=num_layers(model, "decoder"),
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        scale_embedding=bool(model.scalar("decoder/scale_embeddings")),
        activation_function="gelu",
        tie_word_embeddings=is_tied(model),
        **token_ids,
    )
