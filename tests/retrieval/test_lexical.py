"""The lexical index in the store: FTS5 BM25 kept in the same transactions as the chunks and vectors,
one index per collection, queries that treat every character as text, and the upgrade of a store
written before lexical indexes existed (tests/data/retrieval/store-v0.sqlite3, made by that code) or
before CJK text was indexed a character per token (store-v1.sqlite3, likewise)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval import lexical
from retrieval.store import SCHEMA_VERSION, CollectionRecord, DocumentStore, NewDocument

DIM = 4
STORE_V0 = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "store-v0.sqlite3"
STORE_V1 = STORE_V0.with_name("store-v1.sqlite3")
CJK_DOCS = {
    "library": ["北京大学图书馆的藏书很多。"],
    "tea": ["杭州的龙井茶很有名。", "西湖边有很多茶馆。"],
    "gpu": ["训练模型时GPU显存不足怎么办？"],
    "tokyo": ["東京タワーは東京都港区にある電波塔です。"],
    "seoul": ["서울은 대한민국의 수도입니다."],
    "english": ["The library opens at nine."],
}


def record(name: str) -> CollectionRecord:
    return CollectionRecord(name, "all-minilm-l6-v2", "flat", DIM, 200, 40, 1.0)


def doc(doc_id: str, chunks: list[str], metadata: dict | None = None) -> NewDocument:
    vectors = np.random.default_rng(len(doc_id)).standard_normal((len(chunks), DIM)).astype(np.float32)
    return NewDocument(doc_id, " ".join(chunks), metadata or {}, chunks, vectors)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocumentStore]:
    s = DocumentStore(tmp_path / "store.sqlite3")
    s.create_collection(record("c"))
    try:
        yield s
    finally:
        s.close()


def found(store: DocumentStore, collection: str, text: str, where: dict | None = None) -> list[str]:
    """Document ids of the lexical hits, best first."""
    hits = store.lexical_search(collection, text, 100, where)
    chunks = store.chunks([c for c, _ in hits])
    return [chunks[c].document_id for c, _ in hits]


def indexed_terms(store: DocumentStore, collection: str) -> int:
    """Distinct terms in a collection's lexical index (through FTS5's vocabulary table)."""
    store.db.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, "
        f"'{lexical.table_name(collection)}', 'row')"
    )
    try:
        return int(store.db.execute("SELECT count(*) FROM temp.vocab WHERE doc > 0").fetchone()[0])
    finally:
        store.db.execute("DROP TABLE temp.vocab")


def assert_cjk_words_found(store: DocumentStore, collection: str) -> None:
    assert found(store, collection, "图书馆") == ["library"]  # a word inside a run of Han characters
    assert found(store, collection, "龙井茶") == ["tea"]
    assert found(store, collection, "茶馆在哪里") == ["tea"]
    assert found(store, collection, "显存") == found(store, collection, "GPU") == ["gpu"]
    assert found(store, collection, "東京タワー") == ["tokyo"]  # kanji and katakana
    assert found(store, collection, "대한민국") == ["seoul"]  # Hangul with a particle attached
    assert found(store, collection, "library") == ["english"]
    assert found(store, collection, "大阪") == [] and found(store, collection, "书图") == []


def test_bm25_ranks_stems_and_rare_terms(store: DocumentStore) -> None:
    store.add_documents(
        "c",
        [
            doc("idx", ["Building indexes over documents makes search fast."]),
            doc("cat", ["The cat sat on the mat with another cat."]),
            doc("dog", ["A dog chased the cat across the garden."]),
        ],
    )
    assert found(store, "c", "indexing") == ["idx"]  # porter stemming: indexing ~ indexes
    assert found(store, "c", "cat") == ["cat", "dog"]  # two occurrences outrank one
    assert found(store, "c", "garden cat") == ["dog", "cat"]  # the rarer term weighs more
    hits = store.lexical_search("c", "cat", 10)
    assert all(score > 0 for _, score in hits) and hits[0][1] > hits[1][1]
    assert found(store, "c", "zeppelin") == []
    assert found(store, "c", "cat", {"nope": 1}) == []


def test_queries_are_text_not_fts_syntax(store: DocumentStore) -> None:
    store.add_documents("c", [doc("q", ['He said "NEAR" AND then OR not; col:umn * ^start'])])
    for text in ['"NEAR', "AND OR NOT", "col:umn", "*", "^start", "NEAR(a b)", "a - b", "(", '""']:
        store.lexical_search("c", text, 5)  # never an FTS5 syntax error
    assert found(store, "c", "near") == ["q"]
    assert found(store, "c", "!!! ...") == []
    assert lexical.query_terms("the cat and THE dog, cat") == ["cat", "dog"]
    assert lexical.query_terms("what is it") == ["what", "is", "it"]  # stopwords alone stay
    assert lexical.match_expression(["cat", "dog"]) == '"cat" OR "dog"'
    assert lexical.match_expression(lexical.query_terms("")) is None


def test_common_terms_give_way_to_the_postings_budget(
    store: DocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_documents(
        "c", [doc(f"d{i}", [f"common words here {'rare' if i == 3 else ''}"]) for i in range(8)]
    )
    assert lexical.affordable_terms(store.db, "c", ["common", "rare", "absent"]) == ["rare", "common"]
    assert len(found(store, "c", "common rare")) == 8  # under the budget: every matching chunk is ranked
    monkeypatch.setattr(lexical, "POSTINGS_BUDGET", 4)
    assert lexical.affordable_terms(store.db, "c", ["common", "rare"]) == ["rare"]
    assert found(store, "c", "common rare") == ["d3"]  # "common" (in all 8) left out
    assert len(found(store, "c", "common")) == 8  # the rarest term is always kept


def test_lexical_index_follows_replace_delete_and_drop(store: DocumentStore) -> None:
    store.add_documents("c", [doc("a", ["alpha bravo", "charlie"]), doc("b", ["bravo delta"])])
    assert sorted(found(store, "c", "bravo")) == ["a", "b"]
    store.add_documents("c", [doc("a", ["echo foxtrot"])])  # replaced: its old words are gone
    assert found(store, "c", "bravo") == ["b"] and found(store, "c", "charlie") == []
    assert found(store, "c", "foxtrot") == ["a"]
    store.delete_document("c", "b")
    assert found(store, "c", "bravo delta") == []
    store.drop_collection("c")
    assert not lexical.exists(store.db, "c")
    store.create_collection(record("c"))  # the name again: a new, empty index
    assert found(store, "c", "foxtrot") == []


def test_a_failed_write_leaves_no_lexical_rows(store: DocumentStore) -> None:
    store.add_documents("c", [doc("keep", ["kept words"])])
    bad = NewDocument("bad", "t", {}, ["orphan words", "two"], np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError):  # two chunks, one vector: fails after the first chunk's insert
        store.add_documents("c", [doc("new", ["brand new words"]), bad])
    assert found(store, "c", "words") == ["keep"]
    assert found(store, "c", "orphan") == [] and found(store, "c", "brand") == []


def test_collections_have_their_own_statistics(store: DocumentStore) -> None:
    store.create_collection(record("C"))  # differs from "c" only in case
    store.add_documents("c", [doc("x", ["common rare"]), doc("y", ["common"]), doc("z", ["common"])])
    store.add_documents("C", [doc("x", ["rare"]), doc("y", ["rare"]), doc("z", ["common"])])
    assert found(store, "c", "rare common")[0] == "x"
    assert found(store, "C", "rare common")[0] == "z"  # "common" is the rare word there
    assert found(store, "C", "rare") == ["x", "y"] or found(store, "C", "rare") == ["y", "x"]
    store.drop_collection("C")
    assert found(store, "c", "rare") == ["x"]


def test_filters_apply_to_lexical_search(store: DocumentStore) -> None:
    store.add_documents(
        "c",
        [doc("a", ["shared word"], {"lang": "en", "n": 1}), doc("b", ["shared word"], {"lang": "fr"})],
    )
    assert found(store, "c", "shared", {"lang": "fr"}) == ["b"]
    assert found(store, "c", "shared", {"n": 1, "lang": "en"}) == ["a"]
    assert found(store, "c", "shared", {"n": True}) == []


def test_store_written_before_lexical_indexes_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(STORE_V0, path)
    old = sqlite3.connect(path)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    before = {
        table: old.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        for table in ("collections", "documents", "chunks")
    }
    old.close()
    assert {r[0] for r in before["collections"]} == {"notes", "Notes", "empty"}

    store = DocumentStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for table, rows in before.items():  # nothing lost, nothing changed
            assert store.db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() == rows, table
        assert all(lexical.exists(store.db, name) for name in ("notes", "Notes", "empty"))
        assert found(store, "notes", "volcano magma") == ["volcano"]
        assert found(store, "notes", "sourdough") == ["bread"]  # the replaced text, not the first
        assert found(store, "notes", "violin") == []  # deleted before the upgrade
        assert found(store, "notes", "purr", {"topic": "cats"}) == ["cats"]
        hits = found(store, "Notes", "synchronous network API")
        assert hits and set(hits) == {"h11"}
        assert found(store, "empty", "anything") == []
        store.add_documents("notes", [doc("new", ["a fresh document about zeppelins"])])
        assert found(store, "notes", "zeppelin") == ["new"]
    finally:
        store.close()
    again = DocumentStore(path)  # a second open does not index anything twice
    try:
        hits = again.lexical_search("notes", "volcano", 10)
        assert len(hits) == 1
        assert found(again, "notes", "zeppelin") == ["new"]
    finally:
        again.close()


def test_cjk_text_is_found_by_the_words_inside_its_runs(store: DocumentStore) -> None:
    """unicode61 alone makes a whole run of CJK characters one token: a sentence of Chinese was found
    only by the whole sentence."""
    store.add_documents("c", [doc(i, chunks) for i, chunks in CJK_DOCS.items()])
    assert_cjk_words_found(store, "c")
    assert lexical.query_terms("北京大学") == ["北 京", "京 大", "大 学"]
    assert lexical.query_terms("茶 the GPU显存") == ["茶", "gpu", "显 存"]
    store.add_documents("c", [doc("tea", ["上海的咖啡馆。"])])  # replaced: its old words are gone
    assert found(store, "c", "龙井茶") == [] and found(store, "c", "咖啡") == ["tea"]
    for doc_id in CJK_DOCS:
        store.delete_document("c", doc_id)
    assert indexed_terms(store, "c") == 0  # every posting unindexed with the text it was indexed by


def test_store_of_version_1_has_its_lexical_indexes_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(STORE_V1, path)
    old = sqlite3.connect(path)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    old.close()
    store = DocumentStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert_cjk_words_found(store, "zh")
        for doc_id in CJK_DOCS:
            store.delete_document("zh", doc_id)
        assert indexed_terms(store, "zh") == 0
    finally:
        store.close()
