"""Token-window chunking with the embedding model's own tokenizer: windows of ``chunk_tokens`` tokens that
start every ``chunk_tokens - overlap_tokens`` tokens, cut verbatim from the text by character offsets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from retrieval.chunking import ChunkingConfig, chunk_text

DOCS = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "docs"
CONFIGS = [(8, 0), (16, 4), (50, 10), (64, 63), (200, 40)]


def offsets(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(o) for o in enc["offset_mapping"]]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    # Real prose, code, tables and non-Latin scripts (Japanese in idna, Arabic in tqdm).
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.txt"))}


@pytest.mark.parametrize(("chunk", "overlap"), CONFIGS)
def test_windows_follow_token_offsets(
    chunk: int, overlap: int, texts: dict[str, str], tokenizer: Any
) -> None:
    config = ChunkingConfig(chunk, overlap)
    step = chunk - overlap
    for name, text in texts.items():
        offs = offsets(text, tokenizer)
        n = len(offs)
        assert n > chunk, name
        chunks = chunk_text(text, tokenizer, config)
        # as many windows as it takes for the last one to reach the last token, no more
        assert len(chunks) == math.ceil((n - chunk) / step) + 1, name
        for i, piece in enumerate(chunks):
            first, last = i * step, min(i * step + chunk, n) - 1
            assert last - first + 1 <= chunk
            # exactly the text from the window's first token to its last
            assert piece == text[offs[first][0] : offs[last][1]].strip(), (name, i)
        # consecutive windows share exactly `overlap` tokens
        for i in range(len(chunks) - 1):
            window = set(range(i * step, min(i * step + chunk, n)))
            following = set(range((i + 1) * step, min((i + 1) * step + chunk, n)))
            assert len(window & following) == min(overlap, n - (i + 1) * step)
        assert (len(chunks) - 1) * step + chunk >= n  # the last window reaches the last token


@pytest.mark.parametrize(("chunk", "overlap"), CONFIGS)
def test_chunks_are_verbatim_substrings(
    chunk: int, overlap: int, texts: dict[str, str], tokenizer: Any
) -> None:
    for name, text in texts.items():
        chunks = chunk_text(text, tokenizer, ChunkingConfig(chunk, overlap))
        assert chunks
        for piece in chunks:
            assert piece and piece == piece.strip()
            assert piece in text, (name, piece[:60])
        assert text.lstrip().startswith(chunks[0])  # the first chunk starts where the text does


def test_token_counts_of_chunks(tokenizer: Any, texts: dict[str, str]) -> None:
    """Re-tokenised on its own a chunk has about ``chunk_tokens`` tokens (a window that starts inside a word
    tokenises its first piece differently, so a couple more or fewer)."""
    config = ChunkingConfig(50, 10)
    for text in texts.values():
        chunks = chunk_text(text, tokenizer, config)
        for piece in chunks[:-1]:
            n = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
            assert abs(n - 50) <= 3


def test_short_text_is_one_chunk(tokenizer: Any) -> None:
    config = ChunkingConfig(16, 4)
    assert chunk_text("A short sentence.", tokenizer, config) == ["A short sentence."]
    assert chunk_text("  \n padded text\t \n", tokenizer, config) == ["padded text"]
    assert chunk_text("x", tokenizer, config) == ["x"]


def test_exactly_one_window_then_two(tokenizer: Any) -> None:
    config = ChunkingConfig(8, 2)
    eight = "one two three four five six seven eight"
    assert len(offsets(eight, tokenizer)) == 8
    assert chunk_text(eight, tokenizer, config) == [eight]
    nine = eight + " nine"
    assert chunk_text(nine, tokenizer, config) == [eight, "seven eight nine"]


@pytest.mark.parametrize("text", ["", " ", "   \n\t  \r\n", "\u3000\u00a0"])
def test_whitespace_only_gives_no_chunks(text: str, tokenizer: Any) -> None:
    assert chunk_text(text, tokenizer, ChunkingConfig()) == []


def test_default_config() -> None:
    assert ChunkingConfig() == ChunkingConfig(200, 40)


@pytest.mark.parametrize(("chunk", "overlap"), [(7, 0), (0, 0), (-1, 0), (8, 8), (8, 9), (8, -1), (200, 200)])
def test_config_validation(chunk: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        ChunkingConfig(chunk, overlap)


@pytest.mark.parametrize(("chunk", "overlap"), [(8, 0), (8, 7), (254, 253), (200, 0)])
def test_valid_configs(chunk: int, overlap: int) -> None:
    config = ChunkingConfig(chunk, overlap)
    assert (config.chunk_tokens, config.overlap_tokens) == (chunk, overlap)
