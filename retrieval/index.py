"""FAISS indexes over chunk vectors, keyed by chunk id (inner product on L2-normalised vectors).

``flat`` is exact. ``hnsw`` and ``ivf`` trade a little recall for speed on large collections. Every
kind maps chunk ids to vectors so that deleting a document really removes its vectors; HNSW graphs
cannot drop nodes, so an HNSW index is rebuilt from the remaining vectors on delete. IVF needs
training data: until a collection holds enough vectors to train it, searches run exactly.
On a machine with CUDA and faiss-gpu, flat and IVF indexes live on the GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivf")
HNSW_NEIGHBOURS = 32
# Candidates an HNSW search keeps (FAISS's default, 16, found 0.90 of the exact top 10 on 100k vectors).
HNSW_EF_SEARCH = 64
IVF_POINTS_PER_LIST = 39  # FAISS's own minimum for a well-trained coarse quantizer
IVF_TRAIN_AT = 16 * IVF_POINTS_PER_LIST  # below this an IVF collection is searched exactly
# Lists probed per search: an eighth of them, but never fewer than this. On a collection of a few thousand
# chunks an eighth is a handful of lists, and neighbours spread over more than that (recall@10 ~0.75 on
# real chunks); the floor keeps small collections near exact at a cost that only matters past ~50k vectors.
IVF_MIN_PROBES = 32
# An HNSW search under a filter walks the graph through ids the filter rejects and can stop before it meets
# the few it allows: up to this many allowed ids are scored exactly instead, more with a wider beam.
HNSW_EXACT_FILTER_AT_MOST = 4096
HNSW_FILTERED_EF_SEARCH = 512


def _gpu_resources() -> object | None:
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    return faiss.StandardGpuResources()


def _below_id_map(index: faiss.Index) -> faiss.Index:
    """The index that does the searching: ``index`` itself, or the one inside its ID map."""
    return faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)


class VectorIndex:
    def __init__(self, kind: str, dimensions: int) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
        self.kind = kind
        self.dimensions = dimensions
        self._gpu = _gpu_resources() if kind != "hnsw" else None
        self.index = self._empty()

    def _empty(self, train: np.ndarray | None = None) -> faiss.Index:
        d = self.dimensions
        if self.kind == "hnsw":
            inner: faiss.Index = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        elif self.kind == "ivf" and train is not None and len(train) >= IVF_TRAIN_AT:
            nlist = max(1, min(4096, len(train) // IVF_POINTS_PER_LIST))
            quantizer = faiss.IndexFlatIP(d)
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(train)
        else:
            inner = faiss.IndexFlatIP(d)
        # IVF lists store ids themselves; wrapping them in an ID map breaks removal (the map compacts,
        # the lists do not renumber), so only the other kinds get one.
        index = inner if isinstance(inner, faiss.IndexIVF) else faiss.IndexIDMap2(inner)
        return self._placed(index)

    def _placed(self, index: faiss.Index) -> faiss.Index:
        """``index`` (on the CPU) with this project's search settings, moved to the GPU where it runs."""
        inner = _below_id_map(index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        elif isinstance(inner, faiss.IndexIVF):
            inner.nprobe = min(inner.nlist, max(IVF_MIN_PROBES, inner.nlist // 8))
        if self._gpu is not None and self.kind != "hnsw":
            return faiss.index_cpu_to_gpu(self._gpu, 0, index)
        return index

    @property
    def needs_training(self) -> bool:
        """An IVF index still searching exactly although it now has enough vectors to train."""
        if self.kind != "ivf" or self.size < IVF_TRAIN_AT:
            return False
        return not self.ivf_trained

    @property
    def ivf_trained(self) -> bool:
        """True once the index searches through trained IVF lists (approximate) instead of exactly."""
        return isinstance(self.inner, faiss.IndexIVF)

    @property
    def removal_rebuilds(self) -> bool:
        """HNSW graphs cannot drop nodes: removing from one means rebuilding it."""
        return self.kind == "hnsw"

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(
        self, ids: Iterable[int], remaining: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
    ) -> None:
        """Drop ``ids``; ``remaining`` yields what is left, for kinds that must rebuild (HNSW)."""
        gone = np.fromiter(ids, dtype=np.int64)
        if not len(gone):
            return
        if self.kind == "hnsw":
            self.rebuild(remaining())
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(gone))

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Rebuild from (ids, vectors) batches: the store's chunks are the source of truth."""
        parts = list(batches)
        ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=np.int64)
        vectors = (
            np.concatenate([p[1] for p in parts]) if parts else np.empty((0, self.dimensions), np.float32)
        )
        self.index = self._empty(vectors if self.kind == "ivf" else None)
        self.add(ids, vectors)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top ``k`` (chunk id, score) for one query vector; ``allowed`` restricts to those chunk ids."""
        if self.size == 0 or k < 1 or (allowed is not None and not len(allowed)):
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        params = None
        if allowed is not None:
            if self.kind == "hnsw" and len(allowed) <= HNSW_EXACT_FILTER_AT_MOST:
                return self._search_exactly_among(q, k, allowed.astype(np.int64))
            params = self._search_params(faiss.IDSelectorBatch(allowed.astype(np.int64)), k)
        scores, ids = self.index.search(q, min(k, self.size), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def _search_exactly_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        """Exact top ``k`` among the ``allowed`` ids the index holds, from their stored vectors (through
        the ID map), scored by a flat index as a flat collection would score them."""
        held = np.unique(allowed[np.isin(allowed, faiss.vector_to_array(self.index.id_map))])
        if not len(held):
            return []
        exact = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimensions))
        exact.add_with_ids(self.index.reconstruct_batch(held), held)
        scores, ids = exact.search(q, min(k, len(held)))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    @property
    def inner(self) -> faiss.Index:
        """The FAISS index that does the searching (below any ID map), on the CPU: for inspection."""
        return _below_id_map(self._cpu())

    def _search_params(self, selector: faiss.IDSelector, k: int) -> faiss.SearchParameters:
        inner = self.inner
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_FILTERED_EF_SEARCH, 2 * k))
        if isinstance(inner, faiss.IndexIVF):
            # A filter usually leaves few candidates, scattered over lists: probe them all.
            return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nlist)
        return faiss.SearchParameters(sel=selector)

    def _cpu(self) -> faiss.Index:
        return self.index if self._gpu is None else faiss.index_gpu_to_cpu(self.index)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self._cpu(), str(tmp))
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)

    def load(self, path: Path) -> None:
        self.index = self._placed(faiss.read_index(str(path)))

    def id_checksum(self) -> tuple[int, int]:
        """(count, sum of ids): compared with the store's to accept a saved index."""
        cpu = self._cpu()
        if isinstance(cpu, faiss.IndexIDMap):
            ids = faiss.vector_to_array(cpu.id_map)
        else:
            ivf = faiss.extract_index_ivf(cpu)
            lists = [get_invlist_ids(ivf.invlists, i) for i in range(ivf.nlist)]
            ids = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
        return len(ids), int(ids.sum())


def get_invlist_ids(invlists: faiss.InvertedLists, list_no: int) -> np.ndarray:
    ids, _ = get_invlist(invlists, list_no)
    return np.asarray(ids, dtype=np.int64)
