"""The packaged SmolLM2 in float32, its tokenizer and the prompts of the engine's parity tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from shared_engine.models.loader import build_decoder, iter_safetensors
from tests.pipelines.llm.smollm2 import CPU, PROMPTS


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Any:
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    return build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.float32)
