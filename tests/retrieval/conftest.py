"""Fixtures of the retrieval tests: the configured embedding model's spec and its tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from transformers import AutoTokenizer

from pipelines.sources import resolve_source
from services.config.models import ModelSpec, load_model_specs
from services.config.settings import Settings
from services.tasks.embedding import EmbeddingService


def configured_embedding_spec() -> ModelSpec:
    """The embedding model of the configured models.toml (all-minilm-l6-v2 in the repository's)."""
    specs = [s for s in load_model_specs(Settings.from_env().models_config) if s.task == "embedding"]
    assert specs, "the models config names no embedding model"
    return specs[0]


@pytest.fixture(scope="session")
def embedding_spec() -> ModelSpec:
    return configured_embedding_spec()


@pytest.fixture(scope="session")
def tokenizer(embedding_spec: ModelSpec) -> Any:
    return AutoTokenizer.from_pretrained(resolve_source(embedding_spec.source))


@pytest.fixture(scope="module")
def embedder(embedding_spec: ModelSpec) -> Iterator[EmbeddingService]:
    """The configured embedding model, in this process (one per test file)."""
    service = EmbeddingService(embedding_spec)
    try:
        yield service
    finally:
        service.shutdown()
