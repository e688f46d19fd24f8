"""Collections with the real embedding model (all-MiniLM-L6-v2): add/get/delete/replace, metadata filters,
dropping, restarts that load the saved index or rebuild it from the store, and recall@5 on a small
labelled query set (tests/data/retrieval)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval import lexical
from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound, InvalidName
from retrieval.fusion import QueryOptions
from retrieval.index import INDEX_KINDS, IVF_TRAIN_AT, VectorIndex
from services.tasks.embedding import EmbeddingService
from shared_engine.errors import InvalidRequest, ModelNotFound

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"
MIN_RECALL_AT_5 = 0.8

DOCS = {
    "cats": "Cats are small domesticated carnivores that purr, groom their fur and sleep most of the day.",
    "rockets": "A rocket engine burns propellant and expels hot exhaust; the thrust lifts it to orbit.",
    "bread": "To bake bread, knead flour, water, salt and yeast into a dough, let it rise, then bake it hot.",
    "violin": "The violin is a string instrument played with a bow; its four strings are tuned in fifths.",
    "volcano": "A volcano erupts when molten rock called magma rises through the crust and escapes as lava.",
}
QUERIES = {
    "cats": "my kitten purrs on the sofa",
    "rockets": "launching a spacecraft into orbit",
    "bread": "baking a loaf with yeast",
    "violin": "playing a bowed string instrument",
    "volcano": "lava flows from an eruption",
}
META: dict[str, dict[str, Any]] = {
    "cats": {"topic": "animals", "year": 2020, "public": True, "rating": 4.5},
    "rockets": {"topic": "space", "year": 2021, "public": True, "rating": 3.0},
    "bread": {"topic": "food", "year": 2020, "public": False, "rating": 4.5},
    "violin": {"topic": "music", "year": 2022, "public": False},
    "volcano": {"topic": "earth", "year": 2021, "public": True},
}


def open_collections(data_dir: Path, embedder: EmbeddingService) -> Collections:
    return Collections(data_dir, {embedder.name: embedder}, embedder.name)


@pytest.fixture
def cols(tmp_path: Path, embedder: EmbeddingService) -> Iterator[Collections]:
    c = open_collections(tmp_path, embedder)
    try:
        yield c
    finally:
        c.store.close()


def inputs(names: list[str] | None = None) -> list[DocumentInput]:
    return [DocumentInput(DOCS[n], n, META[n]) for n in (names or list(DOCS))]


async def top_ids(cols: Collections, name: str, text: str, k: int = 5, where: Any = None) -> list[str]:
    return [r.document_id for r in await cols.query(name, text, k, where)]


def index_agrees_with_store(cols: Collections, name: str) -> bool:
    index = cols.indexes[name]
    count, total = cols.store.chunk_stats(name)
    return index.id_checksum() == (count, total) and index.size == count


async def assert_every_document_is_found(cols: Collections, name: str, texts: dict[str, str]) -> None:
    """Each document is the best match for its own text, and a wide query returns all of them, once."""
    for doc_id, text in texts.items():
        assert (await top_ids(cols, name, text, 1)) == [doc_id]
    results = await cols.query(name, "anything at all", 100)
    assert {r.document_id for r in results} == set(texts)
    assert len({r.chunk_id for r in results}) == len(results)
    assert index_agrees_with_store(cols, name)


# -- collections -----------------------------------------------------------------------------------


def test_create_records_and_errors(cols: Collections, embedder: EmbeddingService) -> None:
    rec = cols.create("docs", None)
    assert (rec.name, rec.model, rec.index_kind, rec.dimensions) == ("docs", embedder.name, "flat", 384)
    assert (rec.chunk_tokens, rec.overlap_tokens) == (200, 40)
    other = cols.create("Other_2-x", embedder.name, "hnsw", ChunkingConfig(254, 0))
    assert [r.name for r in cols.records()] == ["docs", "Other_2-x"]
    assert cols.record("Other_2-x") == other
    with pytest.raises(CollectionNotFound):
        cols.record("nope")
    with pytest.raises(CollectionExists):
        cols.create("docs", None)
    for bad in ["../etc", "a b", "", "-x", "_x", "x" * 65, "a/b", "a.b", "é"]:
        with pytest.raises(InvalidName):
            cols.create(bad, None)
    with pytest.raises(ModelNotFound, match="no-such-model") as unknown:
        cols.create("m", "no-such-model")
    assert unknown.value.param == "model"
    with pytest.raises(InvalidRequest, match="index"):
        cols.create("i", None, "annoy")
    with pytest.raises(InvalidRequest, match="chunk_tokens"):
        cols.create("t", None, "flat", ChunkingConfig(255, 0))
    assert [r.name for r in cols.records()] == ["docs", "Other_2-x"]


# -- documents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_add_get_query(cols: Collections, kind: str) -> None:
    cols.create("c", None, kind)
    ids, n_chunks = await cols.add("c", inputs())
    assert ids == list(DOCS) and n_chunks == len(DOCS)
    for doc_id, text in DOCS.items():
        doc = cols.get("c", doc_id)
        assert (doc.id, doc.text, doc.metadata, doc.num_chunks) == (doc_id, text, META[doc_id], 1)
    for doc_id, query in QUERIES.items():
        results = await cols.query("c", query, 3)
        assert results[0].document_id == doc_id, (query, [r.document_id for r in results])
        assert results[0].text == DOCS[doc_id] and results[0].metadata == META[doc_id]
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    assert index_agrees_with_store(cols, "c")


async def test_generated_ids_and_long_documents(cols: Collections) -> None:
    cols.create("c", None, "flat", ChunkingConfig(32, 8))
    long_text = (DATA / "docs" / "h11.txt").read_text(encoding="utf-8")
    ids, n_chunks = await cols.add("c", [DocumentInput(long_text), DocumentInput("A short note.")])
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 2
    doc = cols.get("c", ids[0])
    assert doc.text == long_text and doc.num_chunks == n_chunks - 1 > 10
    results = await cols.query("c", "bring your own I/O", 5, options=QueryOptions(group_by="chunk"))
    assert len(results) == 5 and all(r.document_id == ids[0] and r.text in long_text for r in results)
    (best,) = await cols.query("c", "bring your own I/O", 1)  # by document: the long one, its passages
    assert best.document_id == ids[0] and len(best.passages) == 3
    assert [p.chunk_id for p in best.passages] == [r.chunk_id for r in results[:3]]


async def test_add_rejects_bad_input_and_writes_nothing(cols: Collections) -> None:
    cols.create("c", None)
    await cols.add("c", inputs(["cats"]))
    before = cols.store.chunk_stats("c")
    with pytest.raises(InvalidRequest, match="no text"):
        await cols.add("c", [DocumentInput("fine text", "ok"), DocumentInput("  \n ", "empty")])
    with pytest.raises(InvalidRequest, match="distinct"):
        await cols.add("c", [DocumentInput("one", "same"), DocumentInput("two", "same")])
    for bad in ["../etc", "a b", ".hidden", "x" * 129, "a/b"]:
        with pytest.raises(InvalidName):
            await cols.add("c", [DocumentInput("text", bad)])
    with pytest.raises(CollectionNotFound):
        await cols.add("nope", inputs(["cats"]))
    assert cols.store.chunk_stats("c") == before and cols.get("c", "cats").text == DOCS["cats"]
    with pytest.raises(DocumentNotFound):
        cols.get("c", "ok")
    with pytest.raises(InvalidRequest, match="query"):
        await cols.query("c", "   ")
    for call in (cols.query("nope", "x"), cols.delete("nope", "cats")):
        with pytest.raises(CollectionNotFound):
            await call
    with pytest.raises(CollectionNotFound):
        cols.get("nope", "cats")


@pytest.mark.parametrize(
    "kind",
    ["flat", "hnsw", "ivf"],
)
async def test_replace_by_same_id(cols: Collections, kind: str) -> None:
    cols.create("c", None, kind)
    await cols.add("c", inputs())
    old_chunks = cols.store.chunk_ids_of("c", "cats")
    new_text = "The Moon orbits the Earth every 27 days and always shows it the same face."
    ids, _ = await cols.add("c", [DocumentInput(new_text, "cats", {"topic": "space", "v": 2})])
    assert ids == ["cats"]
    doc = cols.get("c", "cats")
    assert (doc.text, doc.metadata) == (new_text, {"topic": "space", "v": 2})
    results = await cols.query("c", QUERIES["cats"], 10)
    assert not {r.chunk_id for r in results} & set(old_chunks), "an old chunk is still searchable"
    assert all("purr" not in r.text for r in results)
    assert len({r.chunk_id for r in results}) == len(results), "a chunk was returned twice"
    assert (await top_ids(cols, "c", "the moon going around the earth", 1)) == ["cats"]
    assert index_agrees_with_store(cols, "c")


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_delete(cols: Collections, kind: str) -> None:
    cols.create("c", None, kind)
    await cols.add("c", inputs())
    await cols.delete("c", "cats")
    with pytest.raises(DocumentNotFound):
        cols.get("c", "cats")
    with pytest.raises(DocumentNotFound):
        await cols.delete("c", "cats")
    assert "cats" not in await top_ids(cols, "c", QUERIES["cats"], 10)
    assert cols.store.count_documents("c") == len(DOCS) - 1
    assert index_agrees_with_store(cols, "c")
    await cols.add("c", inputs(["cats"]))  # and it can come back
    assert (await top_ids(cols, "c", QUERIES["cats"], 1)) == ["cats"]
    assert index_agrees_with_store(cols, "c")


# -- filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_metadata_filter_exact_match(cols: Collections, kind: str) -> None:
    cols.create("c", None, kind)
    await cols.add("c", inputs())
    q = QUERIES["cats"]

    async def found(where: dict[str, Any]) -> set[str]:
        return set(await top_ids(cols, "c", q, 10, where))

    assert await found({"topic": "food"}) == {"bread"}  # even though cats match the query better
    assert await found({"topic": "Food"}) == set()
    assert await found({"year": 2020}) == {"cats", "bread"}
    assert await found({"year": "2020"}) == set()
    assert await found({"public": True}) == {"cats", "rockets", "volcano"}
    assert await found({"public": False}) == {"bread", "violin"}
    assert await found({"rating": 4.5}) == {"cats", "bread"}
    assert await found({"year": 2021, "public": True}) == {"rockets", "volcano"}
    assert await found({"year": 2022, "public": True}) == set()
    assert await found({"nope": 1}) == set()
    assert (await top_ids(cols, "c", q, 1, {"public": True})) == ["cats"]
    results = await cols.query("c", q, 10, {"topic": "music"})
    assert [r.metadata for r in results] == [META["violin"]]


async def test_filter_does_not_confuse_bools_and_numbers(cols: Collections) -> None:
    cols.create("c", None)
    await cols.add(
        "c",
        [DocumentInput("first text", "t", {"flag": True}), DocumentInput("second text", "one", {"flag": 1})],
    )
    assert set(await top_ids(cols, "c", "text", 10, {"flag": True})) == {"t"}
    assert set(await top_ids(cols, "c", "text", 10, {"flag": 1})) == {"one"}


# -- dropping and restarting -----------------------------------------------------------------------


async def test_drop(tmp_path: Path, embedder: EmbeddingService) -> None:
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None, "hnsw")
    cols.create("keep", None)
    await cols.add("c", inputs())
    await cols.add("keep", inputs(["bread"]))
    cols.close()
    saved = tmp_path / "retrieval" / "c.faiss"
    assert saved.is_file()

    cols = open_collections(tmp_path, embedder)
    cols.drop("c")
    assert [r.name for r in cols.records()] == ["keep"]
    assert not saved.exists()
    with pytest.raises(CollectionNotFound):
        await cols.query("c", "x")
    with pytest.raises(CollectionNotFound):
        cols.get("c", "cats")
    with pytest.raises(CollectionNotFound):
        cols.drop("c")
    cols.create("c", None)  # the name is free again, and the new collection is empty
    assert await cols.query("c", QUERIES["cats"]) == []
    assert cols.store.chunk_stats("c") == (0, 0)
    assert (await top_ids(cols, "keep", "bread", 5)) == ["bread"]
    cols.close()

    cols = open_collections(tmp_path, embedder)
    try:
        assert [r.name for r in cols.records()] == ["keep", "c"]
        assert await cols.query("c", QUERIES["cats"]) == []
    finally:
        cols.close()


async def test_drop_while_documents_are_embedded(cols: Collections) -> None:
    cols.create("c", None)
    adding = asyncio.create_task(cols.add("c", inputs()))
    await asyncio.sleep(0)  # the add has found the collection and awaits the embedding model
    assert not adding.done()
    cols.drop("c")
    with pytest.raises(CollectionNotFound):
        await adding
    assert cols.store.count_documents("c") == 0 and cols.store.chunk_stats("c") == (0, 0)
    assert not lexical.exists(cols.store.db, "c")
    cols.create("c", None)  # nothing was left behind under the name
    await cols.add("c", inputs(["bread"]))
    assert (await top_ids(cols, "c", QUERIES["bread"])) == ["bread"]


async def test_delete_waiting_for_the_lock_when_the_collection_goes(cols: Collections) -> None:
    cols.create("c", None)
    await cols.add("c", inputs(["bread"]))
    async with cols.lock:
        deleting = asyncio.create_task(cols.delete("c", "bread"))
        await asyncio.sleep(0)
        cols.drop("c")
    with pytest.raises(CollectionNotFound):
        await deleting


class RebuildCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = VectorIndex.rebuild

        def counting(index: VectorIndex, batches: Any) -> None:
            self.calls += 1
            original(index, batches)

        monkeypatch.setattr(VectorIndex, "rebuild", counting)


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_restart_loads_the_saved_index(
    kind: str, tmp_path: Path, embedder: EmbeddingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None, kind, ChunkingConfig(16, 4))
    await cols.add("c", inputs())
    await cols.delete("c", "violin")
    before = cols.indexes["c"].id_checksum()
    cols.close()
    assert (tmp_path / "retrieval" / "c.faiss").is_file()

    rebuilds = RebuildCounter(monkeypatch)
    cols = open_collections(tmp_path, embedder)
    try:
        assert rebuilds.calls == 0, "the saved index agrees with the store: it must be loaded, not rebuilt"
        assert cols.indexes["c"].id_checksum() == before == cols.store.chunk_stats("c")
        await assert_every_document_is_found(cols, "c", {k: v for k, v in DOCS.items() if k != "violin"})
    finally:
        cols.close()


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_restart_without_saved_index_rebuilds(
    kind: str, tmp_path: Path, embedder: EmbeddingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None, kind)
    await cols.add("c", inputs())
    cols.close()
    (tmp_path / "retrieval" / "c.faiss").unlink()

    rebuilds = RebuildCounter(monkeypatch)
    cols = open_collections(tmp_path, embedder)
    try:
        assert rebuilds.calls == 1
        await assert_every_document_is_found(cols, "c", DOCS)
    finally:
        cols.close()


@pytest.mark.parametrize("kind", INDEX_KINDS)
async def test_restart_with_stale_saved_index_rebuilds(
    kind: str,
    tmp_path: Path,
    embedder: EmbeddingService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The index was saved at a clean shutdown; the next process added and deleted documents and then died
    without saving. The saved file disagrees with the store, so it is rebuilt."""
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None, kind)
    await cols.add("c", inputs(["cats", "rockets", "bread"]))
    cols.close()

    cols = open_collections(tmp_path, embedder)
    await cols.add("c", inputs(["violin", "volcano"]))
    await cols.delete("c", "rockets")
    cols.store.close()  # crash: the index is not saved

    rebuilds = RebuildCounter(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="retrieval.collections"):
        cols = open_collections(tmp_path, embedder)
    try:
        assert rebuilds.calls == 1
        assert any("disagrees with the store" in r.getMessage() for r in caplog.records)
        live = {k: v for k, v in DOCS.items() if k != "rockets"}
        await assert_every_document_is_found(cols, "c", live)
        assert "rockets" not in await top_ids(cols, "c", QUERIES["rockets"], 10)
    finally:
        cols.close()


async def test_restart_with_corrupt_saved_index_rebuilds(tmp_path: Path, embedder: EmbeddingService) -> None:
    cols = open_collections(tmp_path, embedder)
    cols.create("c", None)
    await cols.add("c", inputs())
    cols.close()
    saved = tmp_path / "retrieval" / "c.faiss"
    saved.write_bytes(saved.read_bytes()[:100])
    cols = open_collections(tmp_path, embedder)
    try:
        await assert_every_document_is_found(cols, "c", DOCS)
    finally:
        cols.close()


# -- IVF through Collections -----------------------------------------------------------------------

WORDS = [
    "amber", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "harbor",
    "iris", "jade", "kelp", "lagoon", "meadow", "nectar", "onyx",
]  # fmt: skip


def many_docs(n: int) -> dict[str, str]:
    """n short distinct documents of two 8-token chunks each (with ChunkingConfig(8, 0))."""
    return {
        f"d{i:03d}": f"{WORDS[i % 15]} {WORDS[i // 15 % 15]} item {i} lies near the {WORDS[i * 7 % 15]} shore"
        for i in range(n)
    }


async def ivf_collection(cols: Collections, n_docs: int) -> dict[str, str]:
    cols.create("ivf", None, "ivf", ChunkingConfig(8, 0))
    docs = many_docs(n_docs)
    items = list(docs.items())
    for at in range(0, len(items), 128):
        await cols.add("ivf", [DocumentInput(t, i) for i, t in items[at : at + 128]])
    return docs


def trained(cols: Collections, name: str) -> bool:
    return cols.indexes[name].ivf_trained


async def test_ivf_collection_trains_when_it_grows(cols: Collections) -> None:
    chunks_per_doc = 2
    docs = await ivf_collection(cols, IVF_TRAIN_AT // chunks_per_doc - 2)
    assert cols.store.chunk_stats("ivf")[0] < IVF_TRAIN_AT and not trained(cols, "ivf")
    more = many_docs(IVF_TRAIN_AT // chunks_per_doc + 10)
    extra = {k: v for k, v in more.items() if k not in docs}
    await cols.add("ivf", [DocumentInput(t, i) for i, t in extra.items()])
    assert cols.store.chunk_stats("ivf")[0] >= IVF_TRAIN_AT
    assert trained(cols, "ivf") and not cols.indexes["ivf"].needs_training
    assert index_agrees_with_store(cols, "ivf")
    for doc_id in ["d000", "d100", "d250", max(more)]:
        assert (await top_ids(cols, "ivf", more[doc_id], 1)) == [doc_id]


async def test_trained_ivf_collection_after_a_delete(cols: Collections) -> None:
    docs = await ivf_collection(cols, IVF_TRAIN_AT // 2 + 10)
    assert trained(cols, "ivf")
    await cols.delete("ivf", "d000")
    for doc_id in ["d001", "d100", "d250"]:
        assert (await top_ids(cols, "ivf", docs[doc_id], 1)) == [doc_id]


# -- recall on a labelled query set ----------------------------------------------------------------


async def test_recall_at_5_on_labelled_queries(cols: Collections) -> None:
    labels = json.loads((DATA / "queries.json").read_text(encoding="utf-8"))
    docs = {p.stem: p.read_text(encoding="utf-8") for p in sorted((DATA / "docs").glob("*.txt"))}
    assert set(labels["documents"]) == set(docs) and len(docs) >= 12
    assert sum(len(t.encode()) for t in docs.values()) < 200_000
    cols.create("corpus", None)
    ids, n_chunks = await cols.add("corpus", [DocumentInput(t, k, {"source": k}) for k, t in docs.items()])
    assert sorted(ids) == sorted(docs) and n_chunks > len(docs)

    hits, firsts, misses = 0, 0, []
    for item in labels["queries"]:
        found = await top_ids(cols, "corpus", item["query"], 5)
        firsts += found[:1] == [item["answer"]]
        if item["answer"] in found:
            hits += 1
        else:
            misses.append((item["query"], item["answer"], found))
    n = len(labels["queries"])
    recall = hits / n
    print(f"\nrecall@5 = {recall:.3f} ({hits}/{n} queries; top-1 {firsts}/{n}; {n_chunks} chunks)")
    for miss in misses:
        print("  missed:", miss)
    assert recall >= MIN_RECALL_AT_5, misses


async def test_embedder_vectors_are_unit_length(embedder: EmbeddingService) -> None:
    """Inner product search equals cosine similarity only for L2-normalised vectors."""
    (v,) = await embedder.embed(embedder.tokenize(["a sentence"], truncate=True))
    assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
