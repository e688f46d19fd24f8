"""The durable document store (SQLite, WAL, synchronous=FULL): collections, documents and chunks, chunk ids
that are never reused, atomic multi-document writes, metadata filters, and data that survives a SIGKILL
of the writing process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval.store import CollectionRecord, DocumentStore, NewDocument
from tests.helpers.server import REPO_ROOT

DIM = 8


def record(name: str, created: float = 1.0) -> CollectionRecord:
    return CollectionRecord(name, "all-minilm-l6-v2", "flat", DIM, 200, 40, created)


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def doc(doc_id: str, n_chunks: int = 2, metadata: dict | None = None, seed: int = 0) -> NewDocument:
    chunks = [f"{doc_id} chunk {i}" for i in range(n_chunks)]
    return NewDocument(doc_id, " ".join(chunks), metadata or {}, chunks, vectors(n_chunks, seed))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocumentStore]:
    s = DocumentStore(tmp_path / "db" / "store.sqlite3")
    s.create_collection(record("c"))
    try:
        yield s
    finally:
        s.close()


def all_chunk_ids(store: DocumentStore, collection: str) -> list[int]:
    return [int(i) for ids, _ in store.iter_vectors(collection) for i in ids]


def test_wal_and_full_sync(store: DocumentStore) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_collections_are_listed_in_creation_order_and_unique(store: DocumentStore) -> None:
    store.create_collection(record("b", created=3.0))
    store.create_collection(record("a", created=2.0))
    assert [r.name for r in store.collections()] == ["c", "a", "b"]
    assert store.collections()[0] == record("c")
    with pytest.raises(sqlite3.IntegrityError):
        store.create_collection(record("a"))


def test_add_get_and_chunk_ids(store: DocumentStore) -> None:
    ids = store.add_documents("c", [doc("a", 3, {"lang": "en", "n": 2}), doc("b", 1)])
    assert [len(x) for x in ids] == [3, 1]
    flat = [i for x in ids for i in x]
    assert flat == sorted(flat) and len(set(flat)) == 4
    got = store.document("c", "a")
    assert got is not None
    assert (got.id, got.text, got.metadata, got.num_chunks) == ("a", "a chunk 0 a chunk 1 a chunk 2",
                                                                 {"lang": "en", "n": 2}, 3)  # fmt: skip
    assert store.chunk_ids_of("c", "a") == ids[0]
    assert store.document("c", "missing") is None
    assert store.count_documents("c") == 2
    assert store.existing_ids("c", ["a", "x", "b"]) == {"a", "b"}


def test_vectors_round_trip_bit_exact_in_id_order(store: DocumentStore) -> None:
    docs = [doc(f"d{i}", 3, seed=i) for i in range(5)]
    ids = store.add_documents("c", docs)
    batches = list(store.iter_vectors("c", batch=4))
    assert [len(b[0]) for b in batches] == [4, 4, 4, 3]
    got_ids = np.concatenate([b[0] for b in batches])
    got_vectors = np.concatenate([b[1] for b in batches])
    assert got_ids.tolist() == [i for x in ids for i in x]
    assert got_vectors.dtype == np.float32
    np.testing.assert_array_equal(got_vectors, np.concatenate([d.vectors for d in docs]))
    assert list(store.iter_vectors("nope")) == []


def test_replace_by_same_id_drops_old_chunks_and_never_reuses_ids(store: DocumentStore) -> None:
    (old,) = store.add_documents("c", [doc("a", 3)])
    (new,) = store.add_documents("c", [NewDocument("a", "new text", {"v": 2}, ["new"], vectors(1, 9))])
    assert min(new) > max(old)
    assert store.chunk_ids_of("c", "a") == new
    assert all_chunk_ids(store, "c") == new
    got = store.document("c", "a")
    assert got is not None and (got.text, got.metadata, got.num_chunks) == ("new text", {"v": 2}, 1)
    assert store.count_documents("c") == 1
    assert store.chunks(old) == {}
    # AUTOINCREMENT: deleting the newest chunks does not make their ids available again.
    assert store.delete_document("c", "a") == new
    (again,) = store.add_documents("c", [doc("b", 1)])
    assert min(again) > max(new)


def test_delete_document(store: DocumentStore) -> None:
    ids = store.add_documents("c", [doc("a", 2), doc("b", 2)])
    assert store.delete_document("c", "a") == ids[0]
    assert store.document("c", "a") is None
    assert all_chunk_ids(store, "c") == ids[1]
    assert store.delete_document("c", "a") == []
    assert store.chunk_stats("c") == (2, sum(ids[1]))


def test_chunk_stats_is_count_and_id_sum(store: DocumentStore) -> None:
    assert store.chunk_stats("c") == (0, 0)
    ids = store.add_documents("c", [doc("a", 3), doc("b", 4)])
    flat = [i for x in ids for i in x]
    assert store.chunk_stats("c") == (7, sum(flat))


def test_chunks_lookup(store: DocumentStore) -> None:
    ids = store.add_documents("c", [doc("a", 2, {"k": "v"}), doc("b", 1)])
    hits = store.chunks([ids[0][1], ids[1][0], 10_000])
    assert set(hits) == {ids[0][1], ids[1][0]}
    hit = hits[ids[0][1]]
    assert (hit.chunk_id, hit.document_id, hit.text, hit.metadata) == (
        ids[0][1],
        "a",
        "a chunk 1",
        {"k": "v"},
    )
    assert store.chunks([]) == {}


def test_collections_are_isolated_and_dropped_whole(store: DocumentStore) -> None:
    store.create_collection(record("other"))
    a = store.add_documents("c", [doc("same", 2, {"where": "c"})])
    b = store.add_documents("other", [doc("same", 3, {"where": "other"})])
    assert store.chunk_ids_of("c", "same") == a[0]
    assert store.chunk_ids_of("other", "same") == b[0]
    assert store.chunk_ids_matching("c", {"where": "other"}).tolist() == []
    store.drop_collection("c")
    assert [r.name for r in store.collections()] == ["other"]
    assert store.document("c", "same") is None
    assert store.chunk_stats("c") == (0, 0)
    assert store.count_documents("other") == 1 and all_chunk_ids(store, "other") == b[0]


def test_metadata_filter_exact_match(store: DocumentStore) -> None:
    ids = store.add_documents(
        "c",
        [
            doc("a", 2, {"lang": "en", "year": 2020, "draft": True, "score": 0.5}),
            doc("b", 1, {"lang": "en", "year": 2021, "draft": False}),
            doc("c", 1, {"lang": "de", "year": 2020, "draft": True, "dotted.key": "x"}),
        ],
    )
    a, b, c = ids

    def match(where: dict) -> list[int]:
        return sorted(store.chunk_ids_matching("c", where).tolist())

    assert match({"lang": "en"}) == sorted(a + b)
    assert match({"lang": "EN"}) == []
    assert match({"year": 2020}) == sorted(a + c)
    assert match({"year": "2020"}) == []  # a string is not the number
    assert match({"draft": True}) == sorted(a + c)
    assert match({"draft": False}) == b
    assert match({"score": 0.5}) == a
    assert match({"lang": "en", "year": 2020}) == a
    assert match({"lang": "de", "draft": False}) == []
    assert match({"missing": "x"}) == []
    assert match({"dotted.key": "x"}) == c


def test_metadata_filter_on_list_and_object_values(store: DocumentStore) -> None:
    (a,) = store.add_documents("c", [doc("a", 1, {"tags": ["x", "y"], "owner": {"team": "ml"}})])
    assert store.chunk_ids_matching("c", {"tags": ["x", "y"]}).tolist() == a
    assert store.chunk_ids_matching("c", {"owner": {"team": "ml"}}).tolist() == a


def test_a_failing_batch_writes_nothing(store: DocumentStore) -> None:
    store.add_documents("c", [doc("keep", 1)])
    before = store.chunk_stats("c")
    bad = NewDocument("bad", "x", {}, ["one", "two"], vectors(1, 0))  # 2 chunks, 1 vector
    with pytest.raises(ValueError):
        store.add_documents("c", [doc("first", 2), bad])
    assert store.document("c", "first") is None and store.document("c", "bad") is None
    assert store.chunk_stats("c") == before
    assert not store.db.in_transaction
    store.add_documents("c", [doc("after", 1)])  # the connection is usable again


def test_chunks_need_their_document(store: DocumentStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute(
            "INSERT INTO chunks (collection, document_id, seq, text, vector) "
            "VALUES ('c', 'ghost', 0, 't', x'00')"
        )


def test_committed_writes_are_visible_to_other_connections_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    s = DocumentStore(path)
    s.create_collection(record("c"))
    ids = s.add_documents("c", [doc("a", 2, {"k": 1})])
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT count(*) FROM chunks").fetchone()[0] == 2
    finally:
        other.close()
    s.close()
    again = DocumentStore(path)
    try:
        assert [r.name for r in again.collections()] == ["c"]
        got = again.document("c", "a")
        assert got is not None and got.metadata == {"k": 1} and got.num_chunks == 2
        assert all_chunk_ids(again, "c") == ids[0]
    finally:
        again.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from retrieval.store import CollectionRecord, DocumentStore, NewDocument
    s = DocumentStore(Path(sys.argv[1]))
    s.create_collection(CollectionRecord("c", "m", "flat", 8, 200, 40, 1.0))
    for i in range(int(sys.argv[2])):
        v = np.full((2, 8), i, dtype=np.float32)
        ids = s.add_documents("c", [NewDocument(f"d{i}", f"text {i}", {"i": i}, ["x", "y"], v)])
        print(f"d{i}", *ids[0], flush=True)
    print("done", flush=True)
    time.sleep(60)
    """
)


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """A write is acknowledged when add_documents returns; SIGKILL the writer right after and every
    acknowledged document is there, with its vectors, when the store is opened again."""
    path = tmp_path / "store.sqlite3"
    n = 20
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: dict[str, list[int]] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, *ids = line.split()
            if word == "done":
                break
            acked[word] = [int(i) for i in ids]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert len(acked) == n
    s = DocumentStore(path)
    try:
        assert s.count_documents("c") == n
        by_id = {int(i): v for ids, vs in s.iter_vectors("c") for i, v in zip(ids, vs, strict=True)}
        for name, chunk_ids in acked.items():
            i = int(name[1:])
            got = s.document("c", name)
            assert got is not None and got.text == f"text {i}" and got.metadata == {"i": i}
            assert s.chunk_ids_of("c", name) == chunk_ids
            for c in chunk_ids:
                np.testing.assert_array_equal(by_id[c], np.full(8, i, dtype=np.float32))
    finally:
        s.close()
