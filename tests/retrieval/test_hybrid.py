"""Hybrid, dense and lexical queries through Collections with the real embedding model, on the labelled
corpus of tests/data/retrieval (real package descriptions): what each mode finds, results grouped by
document with their best passages, fusion weights, filters, and the lexical index across restarts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.fusion import RRF_K, FusionWeights, QueryOptions
from services.config.models import ModelSpec
from services.tasks.embedding import EmbeddingService

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"
CORPUS = {p.stem: p.read_text(encoding="utf-8") for p in sorted((DATA / "docs").glob("*.txt"))}
LABELS = json.loads((DATA / "queries.json").read_text(encoding="utf-8"))["queries"]


class CountingEmbedder:
    """The real embedding service, counting the texts it is asked to embed."""

    def __init__(self, real: EmbeddingService) -> None:
        self.real, self.embedded = real, 0
        self.name, self.dimensions, self.max_model_len = real.name, real.dimensions, real.max_model_len
        self.tokenizer, self.tokenize = real.tokenizer, real.tokenize

    async def embed(self, token_lists: Sequence[list[int]]) -> list[np.ndarray]:
        self.embedded += len(token_lists)
        return await self.real.embed(token_lists)


@pytest.fixture(scope="module")
def embedder(embedding_spec: ModelSpec) -> Iterator[CountingEmbedder]:
    service = EmbeddingService(embedding_spec)
    try:
        yield CountingEmbedder(service)
    finally:
        service.shutdown()


def open_collections(data_dir: Path, embedder: CountingEmbedder) -> Collections:
    return Collections(data_dir, {embedder.name: embedder}, embedder.name)  # type: ignore[dict-item]


@pytest.fixture(scope="module")
async def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: CountingEmbedder) -> Collections:
    """The labelled corpus in 64-token chunks (several per document), each tagged with its first letter."""
    cols = open_collections(tmp_path_factory.mktemp("hybrid"), embedder)
    cols.create("corpus", None, "flat", ChunkingConfig(64, 16))
    await cols.add("corpus", [DocumentInput(t, k, {"initial": k[0]}) for k, t in CORPUS.items()])
    return cols


async def doc_ids(cols: Collections, text: str, k: int = 5, **options: Any) -> list[str]:
    return [r.document_id for r in await cols.query("corpus", text, k, options=QueryOptions(**options))]


async def test_each_mode_finds_what_it_should(corpus: Collections, embedder: CountingEmbedder) -> None:
    # an exact, rare identifier: words, not meaning
    assert (await doc_ids(corpus, "xn--", mode="lexical"))[:1] == ["idna"]
    assert (await doc_ids(corpus, "RFC 6214", mode="lexical"))[:1] == ["h11"]
    # a paraphrase with no word in common with the answer: meaning, not words
    assert (await doc_ids(corpus, "a bar that fills up while my loop runs", mode="dense"))[:1] == ["tqdm"]
    for text, answer in [("xn--", "idna"), ("a bar that fills up while my loop runs", "tqdm")]:
        assert answer in await doc_ids(corpus, text, 3), text  # hybrid keeps both
    before = embedder.embedded
    await corpus.query("corpus", "progress meter", 5, options=QueryOptions(mode="lexical"))
    assert embedder.embedded == before, "a lexical query needs no embedding"
    await corpus.query("corpus", "progress meter", 5, options=QueryOptions(mode="hybrid"))
    assert embedder.embedded == before + 1
    assert await doc_ids(corpus, "zzqxj", mode="lexical") == []  # no word matches: nothing


async def test_scores_per_mode(corpus: Collections) -> None:
    for mode, low, high in [("dense", -1.0, 1.0), ("lexical", 0.0, 1e6), ("hybrid", 0.0, 2 / (RRF_K + 1))]:
        results = await corpus.query("corpus", "shortest path in a graph", 10, options=QueryOptions(mode))
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True) and low <= scores[-1] <= scores[0] <= high, mode
        assert results[0].document_id == "networkx", mode


async def test_documents_with_their_best_passages(corpus: Collections) -> None:
    results = await corpus.query("corpus", "bring your own I/O network library", 4)
    assert len({r.document_id for r in results}) == len(results) == 4
    assert results[0].document_id == "h11"
    for r in results:
        assert 1 <= len(r.passages) <= 3
        assert (r.passages[0].chunk_id, r.passages[0].text, r.passages[0].score) == (
            r.chunk_id,
            r.text,
            r.score,
        )
        assert [p.score for p in r.passages] == sorted((p.score for p in r.passages), reverse=True)
        assert all(p.text in CORPUS[r.document_id] for p in r.passages)
    assert len(results[0].passages) == 3  # h11 has many chunks about it
    wide = await corpus.query("corpus", "bring your own I/O", 2, options=QueryOptions(passages=8))
    assert len(wide[0].passages) == 8 and len({p.chunk_id for p in wide[0].passages}) == 8

    chunks = await corpus.query("corpus", "bring your own I/O", 6, options=QueryOptions(group_by="chunk"))
    assert len(chunks) == 6 and all(r.passages == () for r in chunks)
    assert len({r.chunk_id for r in chunks}) == 6 and len({r.document_id for r in chunks}) < 6


async def test_fusion_weights(corpus: Collections) -> None:
    text = "Python license history of the Software Foundation"
    lexical_only = QueryOptions(weights=FusionWeights(dense=0.0, lexical=1.0))
    dense_only = QueryOptions(weights=FusionWeights(dense=1.0, lexical=0.0))
    assert await doc_ids(corpus, text, 8, weights=lexical_only.weights) == await doc_ids(
        corpus, text, 8, mode="lexical"
    )
    assert await doc_ids(corpus, text, 8, weights=dense_only.weights) == await doc_ids(
        corpus, text, 8, mode="dense"
    )


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
async def test_filters_in_every_mode(corpus: Collections, mode: str) -> None:
    results = await corpus.query("corpus", "test", 10, {"initial": "p"}, options=QueryOptions(mode))
    assert results and {r.document_id for r in results} <= {
        "psutil",
        "pytest",
        "pytest-timeout",
        "python-license",
    }
    assert await corpus.query("corpus", "test", 10, {"initial": "?"}, options=QueryOptions(mode)) == []


async def test_hybrid_recall_at_5_on_labelled_queries(corpus: Collections) -> None:
    recall = {}
    for mode in ("dense", "lexical", "hybrid"):
        hits = [item["answer"] in await doc_ids(corpus, item["query"], 5, mode=mode) for item in LABELS]
        recall[mode] = sum(hits) / len(hits)
    print(f"\nrecall@5 by document: {recall}")
    assert recall["hybrid"] >= max(recall["dense"], 0.9), recall


async def test_lexical_index_follows_writes_and_restarts(tmp_path: Path, embedder: CountingEmbedder) -> None:
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None)
    await cols.add("c", [DocumentInput(CORPUS["idna"], "idna"), DocumentInput(CORPUS["tqdm"], "tqdm")])
    await cols.add("c", [DocumentInput("A note about zeppelins and airships.", "idna")])  # replaced
    cols.store.close()  # a crash: nothing saved beyond what the store committed

    cols = open_collections(tmp_path, embedder)
    try:
        lexical = QueryOptions(mode="lexical")
        assert [r.document_id for r in await cols.query("c", "zeppelins", 5, options=lexical)] == ["idna"]
        assert await cols.query("c", "xn-- punycode", 5, options=lexical) == []  # the old text is gone
        await cols.delete("c", "tqdm")
        assert await cols.query("c", "progress meter", 5, options=lexical) == []
    finally:
        cols.close()


async def test_collections_from_before_lexical_indexes(tmp_path: Path, embedder: CountingEmbedder) -> None:
    """A data directory written before lexical indexes existed: every mode works after the upgrade."""
    (tmp_path / "retrieval").mkdir()
    shutil.copy(DATA / "store-v0.sqlite3", tmp_path / "retrieval" / "store.sqlite3")
    cols = open_collections(tmp_path, embedder)
    try:
        assert [r.name for r in cols.records()] == ["notes", "Notes", "empty"]
        for mode in ("hybrid", "dense", "lexical"):
            results = await cols.query("notes", "lava of a volcano", 2, options=QueryOptions(mode))
            assert results[0].document_id == "volcano", mode
            (h11,) = await cols.query("Notes", "bring your own I/O", 1, options=QueryOptions(mode))
            assert h11.document_id == "h11" and len(h11.passages) == (2 if mode == "lexical" else 3), mode
        assert cols.get("notes", "bread").metadata == {"v": 2}
    finally:
        cols.close()
