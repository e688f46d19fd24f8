"""The configured chat model, as the offline engine benchmarks load it: the first ``task = "chat"`` of
models.toml, converted once into the model cache, on the device and dtype asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from pipelines.llm.loader import prepare_model_folder
from services.config.models import ModelSpec, load_model_specs
from services.config.settings import Settings
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization_config import QuantizationConfig


@dataclass(frozen=True)
class ChatModel:
    spec: ModelSpec
    folder: Path
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    hf_config: Any

    def build(self, quantization: QuantizationConfig | None = None, dtype: torch.dtype | None = None) -> Any:
        """A fresh copy of the decoder (each call loads the weights again)."""
        weights = iter_safetensors(self.folder)
        return build_decoder(self.hf_config, weights, self.device, dtype or self.dtype, quantization)


def configured_chat_model(device: str | None = None, dtype: str = "auto") -> ChatModel:
    settings = Settings.from_env()
    spec = next(s for s in load_model_specs(settings.models_config) if s.task == "chat")
    folder = prepare_model_folder(spec.source, settings.model_cache_dir)
    dev = resolve_device(device or spec.device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ChatModel(
        spec, folder, dev, resolve_dtype(dtype, dev), tokenizer, AutoConfig.from_pretrained(folder)
    )
