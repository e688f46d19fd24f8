"""The embedding pipeline: tokenize, encode in micro-batches, pool, normalise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from pipelines.embedding.pooling import pool, read_recipe
from pipelines.embedding.tokenizer import EmbeddingTokenizer
from pipelines.sources import resolve_source
from shared_engine.compute import compute_lane
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatchConfig, MicroBatcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingPipelineConfig:
    name: str
    source: str
    dtype: str = "float32"
    device: str = "auto"
    batching: MicroBatchConfig = field(default_factory=MicroBatchConfig)

    def __post_init__(self) -> None:
        if not self.name or not self.source:
            raise ValueError("an embedding model needs a name and a source")


class EmbeddingPipeline:
    task = "embedding"

    def __init__(self, config: EmbeddingPipelineConfig, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        folder = resolve_source(config.source)
        self.recipe = read_recipe(folder)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.text = EmbeddingTokenizer(folder)
        self.tokenizer: Any = self.text.tokenizer
        self.model = AutoModel.from_pretrained(folder, dtype=self.dtype).to(self.device).eval()
        self.max_input_tokens = self.text.max_input_tokens
        self.dimensions = self.text.dimensions
        self.batcher: MicroBatcher[list[int], np.ndarray] = MicroBatcher(
            self.encode_batch,
            len,
            config.batching,
            name=f"embed-{config.name}",
            lane=compute_lane(self.device),
            on_batch=on_batch,
        )
        logger.info("embedding model %s loaded from %s (%s, %s)", self.name, folder, self.device, self.dtype)

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def tokenize(self, texts: Sequence[str], truncate: bool = False) -> list[list[int]]:
        return self.text.tokenize(texts, truncate)

    def check_length(self, index: int, ids: list[int], truncate: bool) -> list[int]:
        return self.text.check_length(index, ids, truncate)

    async def embed(self, token_lists: Sequence[list[int]]) -> list[np.ndarray]:
        return await self.batcher.submit(list(token_lists))

    @torch.inference_mode()
    def encode_batch(self, batch: list[list[int]]) -> list[np.ndarray]:
        """One forward over ``batch`` right now, bypassing the micro-batcher (which calls this)."""
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = pool(hidden, mask, self.recipe).cpu().numpy()
        return list(vectors)

    def stats(self) -> BatchStats:
        return self.batcher.stats()

    @property
    def is_alive(self) -> bool:
        return self.batcher.is_alive

    def shutdown(self) -> None:
        self.batcher.shutdown()
