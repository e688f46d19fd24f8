"""The reranking pipeline: (query, passages) → one relevance score per passage, the pairs of concurrent
requests scored together in micro-batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipelines.rerank import scoring
from pipelines.rerank.prompts import PairInput, RerankTokenizer, resolve_method
from shared_engine.compute import compute_lane
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatchConfig, MicroBatcher
from shared_engine.offload import off_the_loop_if_large

logger = logging.getLogger(__name__)

# A causal reranker's forward is a decoder's: a batch of 8k padded tokens keeps two cores busy for a few
# seconds, long enough; more would only hold back the next request's pairs.
DEFAULT_BATCHING = MicroBatchConfig(max_batch_tokens=8192, max_batch_size=64, max_wait_ms=2.0)


@dataclass(frozen=True)
class RerankPipelineConfig:
    name: str
    folder: Path  # a Hugging Face folder (a GGUF is converted into one before it gets here)
    dtype: str = "auto"
    device: str = "auto"
    method: str = "auto"  # see pipelines.rerank.prompts.METHODS
    max_input_tokens: int | None = None  # None: 512, within the model's window
    batching: MicroBatchConfig = field(default_factory=lambda: DEFAULT_BATCHING)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rerank model needs a name")
        if self.max_input_tokens is not None and self.max_input_tokens < 16:
            raise ValueError(f"max_input_tokens must be >= 16, got {self.max_input_tokens}")


@dataclass(frozen=True)
class RerankScores:
    """One score per passage, in the passages' order, and the tokens the model read for them."""

    scores: list[float]
    tokens: int


class RerankPipeline:
    task = "rerank"

    def __init__(self, config: RerankPipelineConfig, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        self.method = resolve_method(config.method, config.folder)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.text = RerankTokenizer(config.folder, self.method, config.max_input_tokens)
        self.max_input_tokens = self.text.max_input_tokens
        tokenizer = self.text.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad_id or 0)
        loader: Any = (
            AutoModelForSequenceClassification if self.method == "cross_encoder" else AutoModelForCausalLM
        )
        self.model = loader.from_pretrained(config.folder, dtype=self.dtype).to(self.device).eval()
        self._score = self._scorer()
        self.batcher: MicroBatcher[PairInput, float] = MicroBatcher(
            self._score,
            lambda pair: len(pair.ids),
            config.batching,
            name=f"rerank-{config.name}",
            lane=compute_lane(self.device),
            on_batch=on_batch,
        )
        logger.info(
            "rerank model %s loaded from %s (%s, %s, %s)",
            self.name, config.folder, self.method, self.device, self.dtype,
        )  # fmt: skip

    def _scorer(self) -> Any:
        model, pad_id = self.model, self.pad_id
        if self.method == "cross_encoder":
            labels = int(model.config.num_labels)
            if labels not in (1, 2):
                raise ValueError(f"{self.config.folder}: a cross-encoder has 1 or 2 labels, not {labels}")
            with_types = "token_type_ids" in self.text.tokenizer.model_input_names
            return torch.inference_mode()(lambda b: scoring.cross_encoder(model, b, pad_id, with_types))
        if self.method == "yes_no":
            yes, no = (self._single_token(w) for w in ("yes", "no"))
            return torch.inference_mode()(lambda b: scoring.yes_no(model, b, pad_id, yes, no))
        return torch.inference_mode()(lambda b: scoring.query_likelihood(model, b, pad_id))

    def _single_token(self, word: str) -> int:
        ids = self.text.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{self.config.folder}: {word!r} is not one token, so yes_no cannot score it")
        return int(ids[0])

    def encode(self, query: str, documents: Sequence[str]) -> list[PairInput]:
        return self.text.encode(query, list(documents))

    async def score(self, query: str, documents: Sequence[str]) -> RerankScores:
        size = len(query) + sum(len(d) for d in documents)
        pairs = await off_the_loop_if_large(size, lambda: self.encode(query, documents))
        scores = await self.batcher.submit(pairs)
        return RerankScores(scores, sum(len(p.ids) for p in pairs))

    def score_batch(self, batch: list[PairInput]) -> list[float]:
        """One forward over ``batch`` right now, bypassing the micro-batcher (which calls this)."""
        scores: list[float] = self._score(batch)
        return scores

    def stats(self) -> BatchStats:
        return self.batcher.stats()

    @property
    def is_alive(self) -> bool:
        return self.batcher.is_alive

    def shutdown(self) -> None:
        self.batcher.shutdown()
