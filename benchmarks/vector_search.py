"""FAISS search through the project's VectorIndex: build time, single-query latency, and recall@10 of
HNSW and IVF against exact (flat) search, on clustered unit vectors (default 100k × 384).

    .venv/bin/python benchmarks/vector_search.py [--vectors 100000] [--queries 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import report
from retrieval.index import INDEX_KINDS, VectorIndex

K = 10


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around random centres: closer to real embeddings than uniform noise."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(kind: str, data: np.ndarray, queries: np.ndarray, truth: list[set[int]] | None) -> dict[str, Any]:
    index = VectorIndex(kind, data.shape[1])
    ids = np.arange(1, len(data) + 1, dtype=np.int64)
    start = time.perf_counter()
    index.rebuild([(ids, data)])
    build = time.perf_counter() - start
    latencies, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = index.search(q, K)
        latencies.append(time.perf_counter() - t0)
        found.append({i for i, _ in hits})
    lat = np.array(latencies) * 1000
    recall = (
        None if truth is None else float(np.mean([len(f & t) / K for f, t in zip(found, truth, strict=True)]))
    )
    result = {
        "kind": kind,
        "build_s": round(build, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
        "recall_at_10": None if recall is None else round(recall, 4),
    }
    return result | {"_found": found}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = clustered(args.vectors + args.queries, args.dim, args.clusters, rng)
    data, queries = data[: args.vectors], data[args.vectors :]
    flat = run("flat", data, queries, None)
    truth = flat.pop("_found")
    flat["recall_at_10"] = 1.0
    results = [flat]
    for kind in INDEX_KINDS:
        if kind != "flat":
            r = run(kind, data, queries, truth)
            r.pop("_found")
            results.append(r)
    for r in results:
        print(f"{r['kind']:5s} build {r['build_s']:7.2f} s   search p50 {r['latency_ms_p50']:8.3f} ms   "
              f"p99 {r['latency_ms_p99']:8.3f} ms   recall@10 {r['recall_at_10']}")  # fmt: skip
    payload = {
        "benchmark": "vector_search",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "vectors": args.vectors,
        "queries": args.queries,
        "dim": args.dim,
        "clusters": args.clusters,
        "seed": args.seed,
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='vector-search')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
