"""The default reranker (the packaged SmolLM2-135M-Instruct, converted from its GGUF) on real text: it
puts the paragraph that answers a question first among paragraphs of the same licences; its scores are
the formulas it claims (checked against transformers' full-vocabulary logits), and a pair scores the same
alone or in a padded batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.rerank import RerankPipeline, RerankPipelineConfig, RerankTokenizer, resolve_method
from services.config.models import RERANK_METHODS
from shared_engine.errors import InvalidRequest
from tests.helpers.licenses import QUESTIONS, answer, paragraphs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def make(folder: Path, method: str, dtype: str = "float32", **extra: int) -> RerankPipeline:
    return RerankPipeline(
        RerankPipelineConfig("test-rerank", folder, dtype=dtype, device="cpu", method=method, **extra)
    )


@pytest.fixture(scope="module")
def default(smollm2_folder: Path) -> Iterator[RerankPipeline]:
    """As models.toml configures it: query likelihood, dtype auto."""
    pipeline = make(smollm2_folder, "query_likelihood", dtype="auto")
    yield pipeline
    pipeline.shutdown()


@pytest.fixture(scope="module")
def likelihood(smollm2_folder: Path) -> Iterator[RerankPipeline]:
    pipeline = make(smollm2_folder, "query_likelihood")
    yield pipeline
    pipeline.shutdown()


@pytest.fixture(scope="module")
def yes_no(smollm2_folder: Path) -> Iterator[RerankPipeline]:
    pipeline = make(smollm2_folder, "yes_no")
    yield pipeline
    pipeline.shutdown()


@pytest.fixture(scope="module")
def reference(smollm2_folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()


def candidates() -> list[str]:
    """Every question's answer, then other paragraphs of the GPL: each question meets the others'
    answers, licence text of the same kind, as distractors."""
    return [answer(name, anchor) for _, name, anchor in QUESTIONS] + paragraphs("GPL-3")[10:17]


@pytest.mark.parametrize("index", range(len(QUESTIONS)))
def test_the_default_reranker_puts_the_answering_paragraph_first(default: RerankPipeline, index: int) -> None:
    question = QUESTIONS[index][0]
    texts = candidates()
    result = asyncio.run(default.score(question, texts))
    assert len(result.scores) == len(texts) and all(0 < s <= 1 for s in result.scores)
    best = max(range(len(texts)), key=lambda i: result.scores[i])
    assert best == index, (question, texts[best][:120])
    assert result.tokens == sum(len(p.ids) for p in default.encode(question, texts))


@pytest.mark.parametrize("method", ["query_likelihood", "yes_no"])
def test_a_pair_scores_the_same_alone_and_in_a_padded_batch(
    method: str, likelihood: RerankPipeline, yes_no: RerankPipeline
) -> None:
    pipeline = likelihood if method == "query_likelihood" else yes_no
    texts = [p[: 40 + 60 * i] for i, p in enumerate(candidates()[:6])]  # lengths differ: rows are padded
    pairs = pipeline.encode(QUESTIONS[0][0], texts)
    assert len({len(p.ids) for p in pairs}) == len(pairs)
    batched = pipeline.score_batch(pairs)
    alone = [pipeline.score_batch([p])[0] for p in pairs]
    assert batched == pytest.approx(alone, abs=1e-5)


def test_query_likelihood_is_the_geometric_mean_of_the_query_tokens_probabilities(
    likelihood: RerankPipeline, reference: torch.nn.Module
) -> None:
    (pair,) = likelihood.encode(QUESTIONS[1][0], [candidates()[1]])
    with torch.inference_mode():
        logits = reference(torch.tensor([pair.ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = pair.ids[pair.mark :]
    assert targets == likelihood.text.tokenizer(QUESTIONS[1][0], add_special_tokens=False)["input_ids"]
    mean = sum(float(logprobs[pair.mark - 1 + i, t]) for i, t in enumerate(targets)) / len(targets)
    assert likelihood.score_batch([pair])[0] == pytest.approx(float(torch.exp(torch.tensor(mean))), rel=1e-4)


def test_yes_no_is_p_yes_over_p_yes_plus_p_no(yes_no: RerankPipeline, reference: torch.nn.Module) -> None:
    (pair,) = yes_no.encode(QUESTIONS[0][0], [candidates()[0]])
    tokenizer = yes_no.text.tokenizer
    prompt = tokenizer.decode(pair.ids)
    assert prompt.rstrip().endswith("assistant") and "<Query>: " + QUESTIONS[0][0] in prompt
    with torch.inference_mode():
        probs = torch.softmax(reference(torch.tensor([pair.ids])).logits[0, -1].float(), dim=-1)
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    expected = float(probs[yes] / (probs[yes] + probs[no]))
    assert yes_no.score_batch([pair])[0] == pytest.approx(expected, rel=1e-4)


def test_long_passages_are_cut_to_the_limit_and_a_query_without_room_is_refused(
    smollm2_folder: Path,
) -> None:
    text = RerankTokenizer(smollm2_folder, "query_likelihood", max_input_tokens=64)
    long_passage = " ".join(paragraphs("GPL-3")[:5])
    (pair,) = text.encode("Is there a warranty?", [long_passage])
    assert len(pair.ids) == 64
    assert text.tokenizer.decode(pair.ids[pair.mark :]) == "Is there a warranty?"
    with pytest.raises(InvalidRequest, match="leaves no room") as caught:
        text.encode(" ".join(["warranty"] * 80), ["a passage"])
    assert caught.value.param == "query"
    with pytest.raises(InvalidRequest, match="the query has no tokens"):
        text.encode("", ["a passage"])  # nothing to average over


def test_methods_are_checked_against_the_model_kind(smollm2_folder: Path) -> None:
    assert resolve_method("auto", smollm2_folder) == "query_likelihood"
    assert resolve_method("yes_no", smollm2_folder) == "yes_no"
    with pytest.raises(ValueError, match="needs a sequence-classification model"):
        resolve_method("cross_encoder", smollm2_folder)
    with pytest.raises(ValueError, match="unknown rerank method 'pairwise'"):
        resolve_method("pairwise", smollm2_folder)


def test_the_configuration_knows_the_pipelines_methods() -> None:
    from pipelines.rerank import METHODS

    assert RERANK_METHODS == METHODS
