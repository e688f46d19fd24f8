"""Searches with the real embedding model: results grouped by document when one long document fills the
first ranks (search ranks deeper until it has top_k distinct documents or every matching chunk, in every
mode), and selective filters on an HNSW collection (they find what a flat collection finds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.filters import Comparison
from retrieval.fusion import QueryOptions
from retrieval.search import SearchResult
from services.tasks.embedding import EmbeddingService

QUERY = "how do I configure the server timeout?"
FAQ = "FAQ: to configure the server timeout, set timeout_s in server.toml and restart."
MANUAL = " ".join(
    f"Section {i}: to configure the server timeout of node {i}, the operator edits the server timeout "
    f"settings of the node and configures the timeout of every server in rack {i}."
    for i in range(400)
)


@pytest.fixture(scope="module")
async def crowded(tmp_path_factory: pytest.TempPathFactory, embedder: EmbeddingService) -> Collections:
    """A long manual whose every chunk is about the query, a short FAQ that answers it, and bananas."""
    cols = Collections(tmp_path_factory.mktemp("grouping"), {embedder.name: embedder}, embedder.name)
    cols.create("crowded", None, "flat", ChunkingConfig(64, 16))
    docs = [
        DocumentInput(MANUAL, "manual"),
        DocumentInput(FAQ, "faq"),
        DocumentInput("Bananas are yellow.", "bananas"),
    ]
    await cols.add("crowded", docs)
    return cols


async def test_the_manual_fills_more_than_the_first_window(crowded: Collections) -> None:
    chunks = await crowded.query("crowded", QUERY, 1000, options=QueryOptions("dense", group_by="chunk"))
    per_document = [r.document_id for r in chunks].count("manual")
    assert per_document > QueryOptions("dense").candidates(3)
    assert {r.document_id for r in chunks} == {"manual", "faq", "bananas"}


@pytest.mark.parametrize(
    ("mode", "documents"),
    [
        ("dense", {"manual", "faq", "bananas"}),
        ("hybrid", {"manual", "faq", "bananas"}),
        ("lexical", {"manual", "faq"}),
    ],
)
async def test_one_long_document_does_not_crowd_out_the_others(
    crowded: Collections, mode: str, documents: set[str]
) -> None:
    """Dense ranks every chunk, lexical only those with a query word (bananas has none): every document
    with a ranked chunk comes back, up to top_k, in the order of its best passage."""
    results = await crowded.query("crowded", QUERY, 3, options=QueryOptions(mode))
    assert {r.document_id for r in results} == documents
    assert len(results) == len(documents)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    chunks = await crowded.query("crowded", QUERY, 1000, options=QueryOptions(mode, group_by="chunk"))
    first_rank = {}
    for rank, chunk in enumerate(chunks):
        first_rank.setdefault(chunk.document_id, rank)
    assert [r.document_id for r in results] == sorted(first_rank, key=first_rank.__getitem__)
    for result in results:
        assert result.passages[0].chunk_id == result.chunk_id
        assert chunks[first_rank[result.document_id]].chunk_id == result.chunk_id
    top_two = await crowded.query("crowded", QUERY, 2, options=QueryOptions(mode))
    assert [r.document_id for r in top_two] == [r.document_id for r in results][:2]


async def test_asking_for_more_documents_than_there_are_stops_at_all_of_them(
    crowded: Collections, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAG's default top_k of 4 over these three documents: the search goes as deep as finding all three
    takes (here the first window: the query is about bananas as well), as top_k 3 does, not on through
    the collection for a fourth document that does not exist."""
    index = crowded.indexes["crowded"]
    depths: list[int] = []
    search = index.search

    def recording(vector: Any, k: int, allowed: Any = None) -> Any:
        depths.append(k)
        return search(vector, k, allowed)

    monkeypatch.setattr(index, "search", recording)
    query = "Are bananas yellow, and how do I configure the server timeout?"
    results = await crowded.query("crowded", query, 4, options=QueryOptions("dense"))
    assert {r.document_id for r in results} == {"manual", "faq", "bananas"}
    first = await crowded.query("crowded", query, 3, options=QueryOptions("dense"))
    assert depths == [QueryOptions("dense").candidates(4)] * 2, depths
    assert [r.document_id for r in results] == [r.document_id for r in first]


TOPICS = (
    "baking sourdough bread", "repairing a bicycle chain", "the history of the Roman empire",
    "growing tomatoes in a garden", "jazz piano chords", "knitting a wool scarf", "tax returns",
    "training a puppy to sit", "climbing in the Alps", "brewing green tea", "painting with watercolours",
    "the rules of cricket", "saving money on groceries", "fixing a leaking tap", "planning a wedding",
)  # fmt: skip


async def test_selective_filters_on_hnsw_find_what_a_flat_collection_finds(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """Far from the query, the one document a filter allows was out of an HNSW graph search's reach
    (several of these 300 came back empty): every filter must find its documents, scored as flat scores."""
    cols = Collections(tmp_path, {embedder.name: embedder}, embedder.name)
    docs = [
        DocumentInput(f"Note {i} is about {TOPICS[i % len(TOPICS)]}.", f"d{i}", {"g": i}) for i in range(300)
    ]
    for kind in ("hnsw", "flat"):
        cols.create(kind, None, kind)
        await cols.add(kind, docs)
    dense = QueryOptions("dense")
    for g in range(300):
        got = await cols.query("hnsw", "quantum physics", 3, {"g": g}, options=dense)
        assert [r.document_id for r in got] == [f"d{g}"]
        assert scored(got) == scored(await cols.query("flat", "quantum physics", 3, {"g": g}, options=dense))
    several = Comparison("g", "in", (7, 150, 299))
    got = await cols.query("hnsw", "quantum physics", 5, several, options=dense)
    assert {r.document_id for r in got} == {"d7", "d150", "d299"}
    assert scored(got) == scored(await cols.query("flat", "quantum physics", 5, several, options=dense))


def scored(results: list[SearchResult]) -> list[tuple[str, str, float]]:
    """What a result is, apart from its chunk id (ids are numbered across collections)."""
    return [(r.document_id, r.text, r.score) for r in results]
