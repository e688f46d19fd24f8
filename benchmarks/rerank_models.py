"""Which model and method rank best as a reranker, and how long one request of 20 passages takes: the
measurement behind the default rerank model (README, Reranking).

Ranking: 10 questions over the paragraphs of the GPL-3, Apache-2.0 and MPL-2.0 licences in
/usr/share/common-licenses; each question's answering paragraph is scored among 19 others of the same
licences, drawn with a fixed seed. Reported: how often the answer comes first, and the mean reciprocal
rank of the answer (random order: ~0.18). Latency: 20 passages of 200 tokens (the GPL-3 cut in the model's
own tokens) in one request, the median of 5 questions after one warm-up request.

    .venv/bin/python benchmarks/rerank_models.py                                  # the configured reranker
    .venv/bin/python benchmarks/rerank_models.py --methods query_likelihood,yes_no --dtype float32
    .venv/bin/python benchmarks/rerank_models.py --model /path/to/model.gguf     # or a Hugging Face folder
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from pipelines.llm.loader import prepare_model_folder
from pipelines.rerank import RerankPipeline, RerankPipelineConfig
from services.config.models import load_model_specs
from services.config.settings import Settings

LICENSES = Path("/usr/share/common-licenses")
# (question, licence, words found in the answering paragraph only)
QUESTIONS = (
    ("Does a contributor grant me a patent license, and when does it end if I sue for patent infringement?",
     "Apache-2.0", "Grant of Patent License"),
    ("Does this license give permission to use the licensor's trademarks or product names?",
     "Apache-2.0", "6. Trademarks"),
    ("Is the program provided without any warranty?", "GPL-3", "THERE IS NO WARRANTY FOR THE PROGRAM"),
    ("Can I charge a fee for the copies I distribute?", "GPL-3", "You may charge any price or no price"),
    ("What happens if a court order imposes conditions that contradict this license?",
     "GPL-3", "If conditions are imposed on you"),
    ("Which version applies if the program says it may be used under any later version?",
     "GPL-3", "or any later version"),
    ("Can I combine the covered software with other code under different terms into a larger work?",
     "MPL-2.0", "You may create and distribute a Larger Work"),
    ("What notices must I keep when I redistribute the work, such as the NOTICE file?",
     "Apache-2.0", "4. Redistribution"),
    ("How do I apply these terms to a new program I write?", "GPL-3", "If you develop a new program"),
    ("What counts as a User Product, such as a consumer device?", "GPL-3", '"User Product" is either'),
)  # fmt: skip
LATENCY_QUESTIONS = 5
PASSAGES, PASSAGE_TOKENS = 20, 200


def corpus() -> list[str]:
    out = []
    for name in ("GPL-3", "Apache-2.0", "MPL-2.0"):
        text = (LICENSES / name).read_text(encoding="utf-8")
        folded = (re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text))
        out += [p for p in folded if len(p.split()) > 20]
    return out


async def ranking(pipeline: RerankPipeline, paragraphs: list[str]) -> dict[str, Any]:
    rng = random.Random(0)
    ranks = []
    for question, _, anchor in QUESTIONS:
        answer = next(i for i, p in enumerate(paragraphs) if anchor in p)
        others = rng.sample([i for i in range(len(paragraphs)) if i != answer], PASSAGES - 1)
        scores = (await pipeline.score(question, [paragraphs[i] for i in [answer, *others]])).scores
        ranks.append(1 + sum(s >= scores[0] for s in scores[1:]))
    mrr = sum(1 / r for r in ranks) / len(ranks)
    return {"ranks": ranks, "first": sum(r == 1 for r in ranks), "mrr": round(mrr, 3)}


async def latency(pipeline: RerankPipeline) -> dict[str, Any]:
    tokenizer = pipeline.text.tokenizer
    ids = tokenizer((LICENSES / "GPL-3").read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    passages = [tokenizer.decode(ids[i * PASSAGE_TOKENS : (i + 1) * PASSAGE_TOKENS]) for i in range(PASSAGES)]
    await pipeline.score("warm up", passages[:2])
    seconds, tokens = [], 0
    for question, _, _ in QUESTIONS[:LATENCY_QUESTIONS]:
        start = time.perf_counter()
        tokens = (await pipeline.score(question, passages)).tokens
        seconds.append(time.perf_counter() - start)
    median, fastest = round(statistics.median(seconds), 2), round(min(seconds), 2)
    return {"median_s": median, "min_s": fastest, "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", help="a GGUF file or Hugging Face folder (default: the configured reranker)")
    p.add_argument("--methods", default="query_likelihood,yes_no", help="comma-separated rerank methods")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    specs = load_model_specs(settings.models_config)
    source = args.model or next(s.source for s in specs if s.task == "rerank")
    folder = prepare_model_folder(source, settings.model_cache_dir)
    loadavg, paragraphs, rows = os.getloadavg(), corpus(), []
    for method in args.methods.split(","):
        config = RerankPipelineConfig("bench", folder, dtype=args.dtype, device="auto", method=method)
        pipeline = RerankPipeline(config)
        try:
            row = {"method": method} | asyncio.run(ranking(pipeline, paragraphs))
            row["latency"] = asyncio.run(latency(pipeline))
        finally:
            pipeline.shutdown()
        print(f"{method:17s} first {row['first']}/{len(QUESTIONS)}  MRR {row['mrr']:.3f}  "
              f"ranks {row['ranks']}  {PASSAGES} x {PASSAGE_TOKENS} tokens: "
              f"{row['latency']['median_s']:.2f} s")  # fmt: skip
        rows.append(row)
    device = pipeline.device
    header = report.run_header("rerank_models", str(source), device, pipeline.dtype, loadavg)
    print(f"results: {report.write_results(header | {'methods': rows}, name='rerank-models')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
