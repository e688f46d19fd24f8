"""Results grouped by document when one long document fills the first ranks: search ranks deeper until
it has top_k distinct documents or every matching chunk, in every mode, with the real embedding model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.fusion import QueryOptions
from services.config.models import ModelSpec
from services.tasks.embedding import EmbeddingService

QUERY = "how do I configure the server timeout?"
FAQ = "FAQ: to configure the server timeout, set timeout_s in server.toml and restart."
MANUAL = " ".join(
    f"Section {i}: to configure the server timeout of node {i}, the operator edits the server timeout "
    f"settings of the node and configures the timeout of every server in rack {i}."
    for i in range(400)
)


@pytest.fixture(scope="module")
def embedder(embedding_spec: ModelSpec) -> Iterator[EmbeddingService]:
    service = EmbeddingService(embedding_spec)
    try:
        yield service
    finally:
        service.shutdown()


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
