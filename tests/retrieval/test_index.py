"""The FAISS vector index, all three kinds: exact search (flat, and IVF before training) against numpy,
recall of HNSW and trained IVF against flat, removal, id filters, save/load, and IVF's switch from exact
search to a trained index."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.index import (
    HNSW_EF_SEARCH,
    HNSW_EXACT_FILTER_AT_MOST,
    INDEX_KINDS,
    IVF_MIN_PROBES,
    IVF_POINTS_PER_LIST,
    IVF_TRAIN_AT,
    VectorIndex,
)

DIM = 384  # all-MiniLM-L6-v2's width
N = 2000
K = 10
N_QUERIES = 100
MIN_RECALL = 0.9


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_unit_vectors(n: int, seed: int, dim: int = DIM, clusters: int = 100) -> np.ndarray:
    """Random unit vectors spread around random centres, with nearest-neighbour cosines around 0.55 as
    between sentence embeddings. Uniformly random vectors in 384 dimensions have no neighbourhood
    structure at all (every pair is nearly orthogonal), which no approximate index is built for: on
    them recall@10 is about 0.63 for HNSW and 0.27 for IVF (nprobe = nlist / 8)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)))


def brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]


def batches(ids: np.ndarray, vectors: np.ndarray, size: int = 512) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for at in range(0, len(ids), size):
        yield ids[at : at + size], vectors[at : at + size]


def built(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    index = VectorIndex(kind, vectors.shape[1])
    index.rebuild(batches(ids, vectors))
    return index


def inner_index(index: VectorIndex) -> faiss.Index:
    return index.inner


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return clustered_data(clusters=100)


def clustered_data(clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered_unit_vectors(N, seed=0, clusters=clusters)
    ids = np.arange(N, dtype=np.int64) * 3 + 1000  # ids are chunk row ids, not positions
    queries = clustered_unit_vectors(N_QUERIES, seed=1, clusters=clusters)
    return ids, vectors, queries


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex("annoy", 4)
    assert INDEX_KINDS == ("flat", "hnsw", "ivf")


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_empty_index_and_degenerate_k(kind: str) -> None:
    index = VectorIndex(kind, 4)
    q = unit(np.ones((1, 4)))[0]
    assert index.size == 0 and index.search(q, 5) == []
    assert index.id_checksum() == (0, 0)
    index.add(np.array([7, 9]), unit(np.eye(2, 4)))
    assert index.search(q, 0) == []
    assert len(index.search(q, 50)) == 2  # k larger than the index: everything, no -1 padding
    assert index.search(q, 5, allowed=np.array([], dtype=np.int64)) == []
    assert index.id_checksum() == (2, 16)
    index.add(np.array([], dtype=np.int64), np.empty((0, 4), np.float32))
    assert index.size == 2


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ids, vectors, queries = data
    index = VectorIndex("flat", DIM)
    index.add(ids, vectors)
    assert index.size == N
    for q in queries[:30]:
        got = index.search(q, K)
        want = brute_force(vectors, ids, q, K)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-5)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("clusters", [100, 500], ids=["tight", "loose"])
def test_recall_at_10_against_flat(kind: str, clusters: int) -> None:
    """Loose: four vectors per centre, so a query's neighbours lie in many IVF lists; with an eighth of
    its 51 lists probed IVF found 0.62 of them."""
    ids, vectors, queries = clustered_data(clusters)
    exact = built("flat", ids, vectors)
    approx = built(kind, ids, vectors)
    assert approx.size == N
    if kind == "ivf":
        assert isinstance(inner_index(approx), faiss.IndexIVF), "2,000 vectors are enough to train IVF"
        assert not approx.needs_training
        assert inner_index(approx).nprobe < inner_index(approx).nlist, "the search stays approximate"
    hits = 0
    for q in queries:
        want = {i for i, _ in exact.search(q, K)}
        got = [i for i, _ in approx.search(q, K)]
        assert len(got) == K and len(set(got)) == K
        hits += len(want & set(got))
    recall = hits / (K * len(queries))
    print(f"{kind} recall@{K} vs flat: {recall:.3f}")
    assert recall >= MIN_RECALL


def removal_setup(kind: str, n: int) -> tuple[VectorIndex, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    ids = np.arange(1, n + 1, dtype=np.int64) * 2
    vectors = clustered_unit_vectors(n, seed=5)
    index = built(kind, ids, vectors)
    return index, ids, vectors, dict(zip(ids.tolist(), vectors, strict=True))


@pytest.mark.parametrize(
    ("kind", "n"),
    [
        ("flat", 300),
        ("hnsw", 300),
        ("ivf", 300),
        ("ivf", IVF_TRAIN_AT + 100),
    ],
)
def test_remove_really_removes(kind: str, n: int) -> None:
    index, ids, vectors, live = removal_setup(kind, n)
    trained_before = isinstance(inner_index(index), faiss.IndexIVF)
    gone = ids[::7]
    for i in gone.tolist():
        del live[i]
    calls = []

    def remaining() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        calls.append(1)
        keep = np.array(sorted(live), dtype=np.int64)
        return batches(keep, np.stack([live[i] for i in keep]))

    index.remove(gone.tolist(), remaining)
    assert index.size == n - len(gone)
    assert index.id_checksum() == (len(live), sum(live))
    assert isinstance(inner_index(index), faiss.IndexIVF) == trained_before
    gone_set = set(gone.tolist())
    for i in gone[:20]:
        q = vectors[np.searchsorted(ids, i)]
        got = index.search(q, 20)
        assert not gone_set & {j for j, _ in got}, "a removed vector was returned"
    # Every remaining vector still finds itself.
    keep = [i for i in ids.tolist() if i in live][:30]
    for i in keep:
        assert index.search(live[i], 1)[0][0] == i
    index.remove([], remaining)  # nothing to remove: no rebuild
    assert len(calls) == (1 if kind == "hnsw" else 0)


@pytest.mark.parametrize(("kind", "n"), [("flat", 500), ("hnsw", 500), ("ivf", 500), ("ivf", N)])
def test_filtered_search_returns_only_allowed_ids(
    kind: str, n: int, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    ids, vectors, queries = data
    ids, vectors = ids[:n], vectors[:n]
    index = built(kind, ids, vectors)
    rng = np.random.default_rng(3)
    for size in (1, 5, 40, n // 2):
        allowed = np.sort(rng.choice(ids, size, replace=False))
        # ids the index does not hold are ignored
        with_strangers = np.concatenate([allowed, np.array([-5, 10**9])])
        mask = np.isin(ids, allowed)
        exact_hits = 0
        for q in queries[:10]:
            got = index.search(q, K, with_strangers)
            assert got, "a filter that matches something returns something"
            assert {i for i, _ in got} <= set(allowed.tolist())
            want = brute_force(vectors[mask], ids[mask], q, K)
            if kind != "hnsw":
                # flat, untrained IVF and (probing every list under a filter) trained IVF are exact
                assert [i for i, _ in got] == [i for i, _ in want]
            exact_hits += len({i for i, _ in got} & {i for i, _ in want})
        assert exact_hits >= 0.9 * 10 * min(K, size)


@pytest.mark.parametrize(("kind", "n"), [("flat", 700), ("hnsw", 700), ("ivf", 300), ("ivf", 700)])
def test_save_load_keeps_results_and_checksum(
    kind: str, n: int, data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, vectors, queries = data
    index = built(kind, ids[:n], vectors[:n])
    path = tmp_path / "c.faiss"
    index.save(path)
    assert path.is_file() and not path.with_suffix(".tmp").exists()
    loaded = VectorIndex(kind, DIM)
    loaded.load(path)
    assert loaded.size == index.size == n
    assert loaded.id_checksum() == index.id_checksum() == (n, int(ids[:n].sum()))
    assert loaded.needs_training == index.needs_training is False
    assert type(inner_index(loaded)) is type(inner_index(index))
    for q in queries[:20]:
        a, b = index.search(q, K), loaded.search(q, K)
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-6)
    # the loaded index keeps working: add, remove, filter
    loaded.add(np.array([10**6]), queries[:1])
    assert loaded.search(queries[0], 1)[0][0] == 10**6
    loaded.remove([10**6], lambda: batches(ids[:n], vectors[:n]))
    assert loaded.id_checksum() == index.id_checksum()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_load_applies_the_current_search_settings(
    kind: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """An index file written with other settings (an earlier release's narrower search) searches as a
    new one does once loaded."""
    ids, vectors, _ = data
    fresh = built(kind, ids, vectors)
    inner = inner_index(fresh)
    if kind == "hnsw":
        assert inner.hnsw.efSearch == HNSW_EF_SEARCH
        inner.hnsw.efSearch = 16
    else:  # 51 lists: an eighth of them is 6, under the floor
        assert inner.nlist == N // IVF_POINTS_PER_LIST and inner.nprobe == IVF_MIN_PROBES
        inner.nprobe = 1
    fresh.save(tmp_path / "old.faiss")
    loaded = VectorIndex(kind, DIM)
    loaded.load(tmp_path / "old.faiss")
    got = inner_index(loaded)
    assert (got.hnsw.efSearch if kind == "hnsw" else got.nprobe) == (
        HNSW_EF_SEARCH if kind == "hnsw" else IVF_MIN_PROBES
    )


def test_ivf_is_exact_until_it_can_train_then_trains_on_rebuild(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ids, vectors, queries = data
    n = IVF_TRAIN_AT - 1
    index = VectorIndex("ivf", DIM)
    index.add(ids[:n], vectors[:n])
    assert not index.needs_training
    assert not isinstance(inner_index(index), faiss.IndexIVF)
    for q in queries[:10]:  # exact below the threshold
        assert [i for i, _ in index.search(q, K)] == [i for i, _ in brute_force(vectors[:n], ids[:n], q, K)]

    index.add(ids[n : n + 1], vectors[n : n + 1])  # crosses IVF_TRAIN_AT
    assert index.size == IVF_TRAIN_AT
    assert index.needs_training
    index.rebuild(batches(ids[: n + 1], vectors[: n + 1]))
    assert not index.needs_training
    inner = inner_index(index)
    assert isinstance(inner, faiss.IndexIVF) and inner.is_trained
    assert inner.nlist == IVF_TRAIN_AT // IVF_POINTS_PER_LIST and inner.nprobe >= 1
    assert index.size == IVF_TRAIN_AT
    assert index.id_checksum() == (IVF_TRAIN_AT, int(ids[:IVF_TRAIN_AT].sum()))
    for i in range(0, IVF_TRAIN_AT, 50):  # every vector still finds itself
        assert index.search(vectors[i], 1)[0][0] == ids[i]

    # flat and HNSW never need training
    for kind in ("flat", "hnsw"):
        other = built(kind, ids[:IVF_TRAIN_AT], vectors[:IVF_TRAIN_AT])
        assert not other.needs_training


def test_ivf_rebuilt_below_threshold_searches_exactly_again(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ids, vectors, queries = data
    index = built("ivf", ids[:IVF_TRAIN_AT], vectors[:IVF_TRAIN_AT])
    assert isinstance(inner_index(index), faiss.IndexIVF)
    n = IVF_TRAIN_AT // 2
    index.rebuild(batches(ids[:n], vectors[:n]))
    assert not isinstance(inner_index(index), faiss.IndexIVF) and not index.needs_training
    q = queries[0]
    assert [i for i, _ in index.search(q, K)] == [i for i, _ in brute_force(vectors[:n], ids[:n], q, K)]


def test_trained_ivf_reports_the_right_ids_after_a_removal(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """The smallest case: remove the first id of a trained IVF index and search for another vector
    exactly; its own id must come back (it comes back as its neighbour's in id order)."""
    ids, vectors, _ = data
    index = built("ivf", ids[:IVF_TRAIN_AT], vectors[:IVF_TRAIN_AT])
    assert isinstance(inner_index(index), faiss.IndexIVF)
    index.remove([int(ids[0])], lambda: batches(ids[1:IVF_TRAIN_AT], vectors[1:IVF_TRAIN_AT]))
    assert index.search(vectors[100], 1)[0][0] == ids[100]


@pytest.mark.parametrize("n", [300, N])
def test_selective_filters_on_hnsw_find_the_allowed_ids_with_flat_scores(
    n: int, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """A graph search under a filter can stop before it meets the few ids the filter allows: HNSW must
    answer a selective filter like the exact flat index, ids and scores alike."""
    ids, vectors, queries = data
    ids, vectors = ids[:n], vectors[:n]
    hnsw, flat = built("hnsw", ids, vectors), built("flat", ids, vectors)
    rng = np.random.default_rng(5)
    for q in queries[:20]:
        # the ids the query ranks lowest: the graph search starts far from them
        far = ids[np.argsort(vectors @ q)[:40]]
        for allowed in (far[:1], far[1:3], far[3:40], np.sort(rng.choice(ids, 200, replace=False))):
            got = hnsw.search(q, K, allowed)
            assert got == flat.search(q, K, allowed)
            assert len(got) == min(K, len(allowed))


def test_hnsw_under_a_wide_filter_searches_the_graph_with_a_wide_beam() -> None:
    """Past HNSW_EXACT_FILTER_AT_MOST allowed ids the graph is searched, under the filter, near flat."""
    n = 3 * HNSW_EXACT_FILTER_AT_MOST
    vectors = clustered_unit_vectors(n, seed=7)
    ids = np.arange(n, dtype=np.int64) * 2 + 1
    hnsw, flat = built("hnsw", ids, vectors), built("flat", ids, vectors)
    allowed = np.sort(np.random.default_rng(8).choice(ids, HNSW_EXACT_FILTER_AT_MOST + 1, replace=False))
    found = 0
    for q in clustered_unit_vectors(20, seed=9):
        got = hnsw.search(q, K, allowed)
        assert {i for i, _ in got} <= set(allowed.tolist())
        found += len({i for i, _ in got} & {i for i, _ in flat.search(q, K, allowed)})
    assert found >= 0.95 * 20 * K
