"""Tokenizing only as much of a text as a window uses: the ids are the whole text's leading ids, with the
real tokenizers of the packaged models (WordPiece for the embedder, byte-level BPE for the LLM and
reranker), on texts where a prefix is not simply proportional to its tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from pipelines.sources import resolve_source
from pipelines.token_prefix import MARGIN_TOKENS, leading_ids, longest_token_chars
from tests.pipelines.embedding.test_embedding_pipeline import SOURCE as EMBEDDER_SOURCE
from tests.pipelines.embedding.test_embedding_pipeline import license_text

TEXTS = {
    "license": lambda: license_text() * 40,
    "one long word": lambda: "a" * 200_000 + " and then words",  # one [UNK] for WordPiece
    "emoji": lambda: "🙂" * 40_000 + " end",
    "accents dropped": lambda: "e\u0301" * 100_000 + " the end",  # BERT strips the combining marks
    "zero width": lambda: "\u200b" * 200_000 + " hello world" * 50,
    "cjk": lambda: "漢字" * 60_000,
    "short": lambda: "hello world",
}


@pytest.fixture(scope="module", params=["embedder", "llm"])
def tokenizer(request: pytest.FixtureRequest, smollm2_folder: Path) -> Any:
    folder = resolve_source(EMBEDDER_SOURCE) if request.param == "embedder" else smollm2_folder
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("n", [64, 256])
@pytest.mark.parametrize("name", list(TEXTS))
def test_the_leading_ids_are_the_whole_texts(tokenizer: Any, name: str, n: int) -> None:
    text = TEXTS[name]()
    seen: list[int] = []

    def encode(texts: list[str]) -> list[list[int]]:
        seen.extend(len(t) for t in texts)
        ids: list[list[int]] = tokenizer(texts)["input_ids"]
        return ids

    full = tokenizer(text)["input_ids"]
    (lead,) = leading_ids(encode, [text], n, longest_token_chars(tokenizer))
    assert lead.ids[:n] == full[:n]
    assert text.startswith(lead.text)
    if lead.whole:
        assert lead.ids == full and lead.text == text
    else:
        assert len(lead.ids) >= n + MARGIN_TOKENS and len(full) > n
    if name == "license":  # the common case: one prefix, a small part of the text
        assert not lead.whole and len(seen) == 1 and seen[0] < len(text) // 10


def test_a_batch_keeps_its_order_and_tokenizes_short_texts_once(tokenizer: Any) -> None:
    texts = ["short one", license_text() * 4, "a" * 100_000, "another short"]
    calls: list[int] = []

    def encode(batch: list[str]) -> list[list[int]]:
        calls.append(len(batch))
        ids: list[list[int]] = tokenizer(batch)["input_ids"]
        return ids

    leads = leading_ids(encode, texts, 32, longest_token_chars(tokenizer))
    for text, lead in zip(texts, leads, strict=True):
        assert lead.ids[:32] == tokenizer(text)["input_ids"][:32]
    assert [lead.whole for lead in leads][::3] == [True, True]
    assert calls[0] == len(texts) and all(c < len(texts) for c in calls[1:])


@pytest.mark.parametrize(
    "word", ["q" * 150, "w" * 60 + "\u2fd5"], ids=["past-100-letters", "unknown-character"]
)
@pytest.mark.parametrize("n", [64, 256])
def test_a_word_across_the_prefix_end_is_read_as_the_whole_text_reads_it(
    tokenizer: Any, word: str, n: int
) -> None:
    """WordPiece reads such a word as one [UNK], but a part of it as pieces: no prefix ends inside it. Spaces
    make the words fall among the first ``n`` tokens though far into the text."""
    longest = longest_token_chars(tokenizer)
    text = "x " * (n - 10)
    for k in (1, 2):  # a word across each length a prefix could be cut at
        text = text.ljust(k * (n + MARGIN_TOKENS) * longest - len(word) // 2) + word
    text += " tail" * 20_000
    full = tokenizer(text)["input_ids"]
    (lead,) = leading_ids(lambda t: tokenizer(t)["input_ids"], [text], n, longest)
    assert not lead.whole and lead.ids[:n] == full[:n]
