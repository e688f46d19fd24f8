"""Retrieval quality (recall@5, recall@10, nDCG@10 per mode) and speed (ingest documents/s, query latency
p50/p99 at ≥100k chunks) through the project's own Collections, with the configured embedding model.

    .venv/bin/python benchmarks/retrieval_quality.py                  # quality and speed, as in RESULTS.md
    .venv/bin/python benchmarks/retrieval_quality.py --beir DIR       # quality on a BEIR-format test set
    .venv/bin/python benchmarks/retrieval_quality.py --scale-chunks 0 # quality only

Quality is judged per document: results grouped by document, a query's relevant documents from its
judgements. The default test set is tests/data/retrieval (14 package descriptions, 22 labelled queries)
mixed into distractor documents — other package descriptions and documentation shipped in this virtualenv
— so that the right document must be found among hundreds. ``--beir`` reads any test set in BEIR's layout
(corpus.jsonl, queries.jsonl, qrels/test.tsv), e.g. SciFact or NFCorpus where one can be had.

When models.toml configures a rerank model, a ``hybrid+rerank`` row reranks the hybrid candidates as
``"rerank": true`` does in the gateway (services/gateway/reranking.py: 40 candidates for a top 10), with
the latency the rerank step adds to each query; ``--no-rerank`` leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import report
from benchmarks.retrieval_sets import TestSet, beir_set, labelled_set, venv_texts
from benchmarks.vector_search import clustered
from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.fusion import QueryOptions
from retrieval.search import SearchRequest, search
from services.config.models import load_model_specs
from services.config.settings import Settings
from services.gateway.reranking import candidates, rerank_results
from services.tasks.embedding import EmbeddingService
from services.tasks.rerank import RerankService

MODES = ("dense", "lexical", "hybrid")


def ndcg_at_10(found: list[str], judged: dict[str, int]) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(found[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


async def add_all(cols: Collections, name: str, docs: dict[str, str], batch: int = 32) -> dict[str, float]:
    items = list(docs.items())
    chunks, start = 0, time.perf_counter()
    for at in range(0, len(items), batch):
        # ids of the store's pattern; the benchmark keeps its own names in the metadata
        part = [DocumentInput(t, f"d{at + i}", {"key": k}) for i, (k, t) in enumerate(items[at : at + batch])]
        chunks += (await cols.add(name, part))[1]
    seconds = time.perf_counter() - start
    return {
        "documents": len(items),
        "chunks": chunks,
        "seconds": round(seconds, 1),
        "documents_per_s": round(len(items) / seconds, 2),
        "chunks_per_s": round(chunks / seconds, 1),
    }


async def quality(
    cols: Collections, name: str, ts: TestSet, mode: str, reranker: RerankService | None = None
) -> dict[str, Any]:
    options = QueryOptions(mode=mode, group_by="document", passages=1)
    r1, r5, r10, ndcg, added = [], [], [], [], []
    for qid, text in ts.queries.items():
        hits = await cols.query(name, text, 10 if reranker is None else candidates(10), options=options)
        if reranker is not None:
            start = time.perf_counter()
            hits = await rerank_results(reranker, text, hits, 10)
            added.append(time.perf_counter() - start)
        found = [h.metadata["key"] for h in hits]
        judged = ts.qrels[qid]
        r1.append(float(bool(found[:1]) and found[0] in judged))  # the first result is relevant
        r5.append(len(set(found[:5]) & set(judged)) / len(judged))
        r10.append(len(set(found[:10]) & set(judged)) / len(judged))
        ndcg.append(ndcg_at_10(found, judged))
    means = {"success_at_1": r1, "recall_at_5": r5, "recall_at_10": r10, "ndcg_at_10": ndcg}
    row: dict[str, Any] = {"mode": mode if reranker is None else f"{mode}+rerank"}
    row |= {k: round(float(np.mean(v)), 4) for k, v in means.items()}
    return row | ({"candidates": candidates(10)} | percentiles("rerank_added", added) if added else {})


def percentiles(name: str, seconds: list[float]) -> dict[str, Any]:
    ms = np.array(seconds) * 1000
    return {name + "_p50_ms": round(float(np.percentile(ms, 50)), 2),
            name + "_p99_ms": round(float(np.percentile(ms, 99)), 2)}  # fmt: skip


async def latency(cols: Collections, name: str, queries: list[str], mode: str, rounds: int) -> dict[str, Any]:
    """Single queries, one at a time: end to end through Collections.query (the query's embedding
    included), and the search alone (the same call given the query's vector)."""
    options = QueryOptions(mode=mode)
    embedder = cols.embedders[cols.record(name).model]
    for q in queries[:5]:  # warm: first forwards, SQLite's page cache
        await cols.query(name, q, 5, options=options)
    whole, alone = [], []
    for _ in range(rounds):
        for q in queries:
            start = time.perf_counter()
            await cols.query(name, q, 5, options=options)
            whole.append(time.perf_counter() - start)
            vector = None
            if mode != "lexical":
                (vector,) = await embedder.embed(embedder.tokenize([q], truncate=True))  # type: ignore[union-attr]
            start = time.perf_counter()
            search(cols.store, cols.indexes[name], SearchRequest(name, vector, q, 5, options))
            alone.append(time.perf_counter() - start)
    return {"mode": mode, "queries": len(whole)} | percentiles("query", whole) | percentiles("search", alone)


async def run_quality(
    embedder: EmbeddingService, ts: TestSet, distractors: int, work: Path, reranker: RerankService | None
) -> dict[str, Any]:
    docs = dict(ts.docs)
    if distractors:
        for i, (key, text) in enumerate(venv_texts(set(ts.docs))):
            if i == distractors:
                break
            docs.setdefault(key, text)
    cols = Collections(work / "quality", {embedder.name: embedder}, embedder.name)
    cols.create("bench", None)  # the defaults: flat index, 200-token chunks with 40 of overlap
    ingest = await add_all(cols, "bench", docs)
    print(f"quality set: {len(docs)} documents ({len(ts.docs)} judged), {ingest['chunks']} chunks; "
          f"ingest {ingest['documents_per_s']} documents/s")  # fmt: skip
    rows = [await quality(cols, "bench", ts, mode) for mode in MODES]
    if reranker is not None:
        rows.append(await quality(cols, "bench", ts, "hybrid", reranker))
    for r in rows:
        added = f"  rerank adds p50 {r['rerank_added_p50_ms']:.0f} ms" if "rerank_added_p50_ms" in r else ""
        print(f"  {r['mode']:13s} success@1 {r['success_at_1']:.3f}  recall@5 {r['recall_at_5']:.3f}  "
              f"recall@10 {r['recall_at_10']:.3f}  nDCG@10 {r['ndcg_at_10']:.3f}{added}")  # fmt: skip
    cols.close()
    return {"test_set": ts.name, "queries": len(ts.queries), "documents": len(docs), "ingest": ingest,
            "modes": rows}  # fmt: skip


class FillEmbedder:
    """The real embedding model, except for documents added while ``filling``: those get clustered random
    unit vectors. Embedding 100k chunks takes hours on two cores; a flat search costs the same whatever the
    vectors hold, and the lexical index gets the real text, cut by the real tokenizer. Queries are always
    embedded by the model, inside the timed call."""

    def __init__(self, real: EmbeddingService, seed: int = 0) -> None:
        self.real, self.filling = real, True
        self.rng = np.random.default_rng(seed)
        self.name, self.dimensions = real.name, real.dimensions
        self.max_model_len, self.tokenizer, self.tokenize = real.max_model_len, real.tokenizer, real.tokenize

    async def embed(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        if not self.filling:
            return await self.real.embed(token_lists)
        return list(clustered(len(token_lists), self.dimensions, clusters=1000, rng=self.rng))


async def run_speed(
    embedder: EmbeddingService, ts: TestSet, args: argparse.Namespace, work: Path
) -> list[Any]:
    """Fill one collection per index kind with at least ``target_chunks`` chunks of real text through
    Collections.add (store, lexical and vector index writes, without the model: see FillEmbedder), then
    time single queries."""
    fill = FillEmbedder(embedder)
    cols = Collections(work / "speed", {fill.name: fill}, fill.name)  # type: ignore[dict-item]
    texts: dict[str, str] = {}
    chunk_tokens = args.scale_chunk_tokens
    budget, words = args.scale_chunks * chunk_tokens / 2.0, 0  # code docstrings: ~2.4 tokens a word
    for key, text in venv_texts(set()):
        texts[key] = text
        words += len(text.split())
        if words >= budget:
            break
    out = []
    for kind in args.scale_index.split(","):
        fill.filling = True
        cols.create(kind, None, kind, ChunkingConfig(chunk_tokens, 0))
        writes = await add_all(cols, kind, texts)
        fill.filling = False
        print(f"speed set: {writes['documents']} documents, {writes['chunks']} chunks of {chunk_tokens} "
              f"tokens, {kind}: {writes['documents_per_s']} documents/s written, no model")  # fmt: skip
        queries = list(ts.queries.values())
        rows = [await latency(cols, kind, queries, m, 5) for m in ("hybrid", "dense", "lexical")]
        for r in rows:
            print(f"  {r['mode']:8s} query p50 {r['query_p50_ms']:.1f} p99 {r['query_p99_ms']:.1f} ms; "
                  f"search alone p50 {r['search_p50_ms']:.1f} p99 {r['search_p99_ms']:.1f} ms")  # fmt: skip
        out.append(
            {"index": kind, "chunk_tokens": chunk_tokens, "writes_without_model": writes, "latency": rows}
        )
    cols.close()
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    specs = load_model_specs(settings.models_config)
    spec = next(s for s in specs if s.task == "embedding")
    embedder = EmbeddingService(spec)
    rerank_spec = None if args.no_rerank else next((s for s in specs if s.task == "rerank"), None)
    reranker = None if rerank_spec is None else RerankService(rerank_spec, settings)
    ts = beir_set(args.beir) if args.beir else labelled_set()
    try:
        with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
            work = Path(tmp)
            out: dict[str, Any] = {"model": spec.name}
            distractors = 0 if args.beir else args.distractors
            out["quality"] = await run_quality(embedder, ts, distractors, work, reranker)
            out["reranker"] = None if reranker is None else f"{reranker.name} ({reranker.method})"
            if args.scale_chunks:
                out["speed"] = await run_speed(embedder, ts, args, work)
            return out
    finally:
        embedder.shutdown()
        if reranker is not None:
            reranker.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--beir", type=Path, help="a BEIR-format test set folder (instead of tests/data/retrieval)"
    )
    p.add_argument("--distractors", type=int, default=200, help="unjudged documents beside the judged ones")
    p.add_argument("--scale-chunks", type=int, default=100_000, help="chunks for the speed run (0: none)")
    p.add_argument("--scale-chunk-tokens", type=int, default=64)
    p.add_argument("--scale-index", default="flat,hnsw", help="index kinds of the speed run, comma-separated")
    p.add_argument("--no-rerank", action="store_true", help="no hybrid+rerank row, even with a rerank model")
    args = p.parse_args(argv)
    loadavg = os.getloadavg()
    results = asyncio.run(main_async(args))
    header = report.run_header(
        "retrieval_quality", results.pop("model"), torch.device("cpu"), torch.float32, loadavg
    )
    payload = header | vars(args) | {"beir": str(args.beir) if args.beir else None} | results
    print(f"results: {report.write_results(payload, name='retrieval-quality')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
