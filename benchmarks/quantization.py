"""Weight-only quantization of the chat model: decode speed, weight memory, perplexity and greedy
agreement with the unquantized model, for each variant in one run.

Speed: decode tokens/s through ``LLMEngine`` (paged cache, prefix caching off so every round does the
same work) at each batch size, fixed prompts from Python's LICENSE.txt, sampled with per-request
seeds and ``ignore_eos``; only steps that are pure decode are timed. Variants are measured in
alternating rounds (the order rotating), so a machine whose speed drifts slows them all alike, and
each figure is the median over rounds, with the CPU other processes used meanwhile.
Quality: perplexity over all of LICENSE.txt in windows of 512 tokens, and the fraction of identical
tokens in greedy continuations (first 64 tokens) of fixed prompts, against the unquantized model.

    .venv/bin/python benchmarks/quantization.py [--rounds 8] [--threads 1] [--variants none,int8,int4]

A variant is ``none`` or ``MODE[-gGROUP][+head][+float][+weight-only]``: ``int4-g32+head`` is int4 with
groups of 32 and the LM head quantized too, ``+weight-only`` keeps activations in floating point;
``auto`` is what ``quantization = "auto"`` gives on this device.
``--cpu-isa avx2`` runs it all as an AVX2-only CPU would (benchmarks/cpu_isa.py).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.noise import CpuMeter
from benchmarks.workload import build_prompts, corpus_words, default_corpus
from shared_engine.attention import AttentionMetadata, PrefillChunk, allocate_kv_caches, kv_cache_dtype
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.quantization_config import DEFAULT_INT4_GROUP_SIZE, QuantizationConfig
from shared_engine.quantize_model import weight_bytes
from shared_engine.sampling_params import SamplingParams

AGREEMENT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "The three primary colors are",
    "To make a cup of tea, first",
    "In 1969, the first humans landed on the Moon. The crew were",
    "The most important rule of software engineering is",
    "Photosynthesis is the process by which",
)
PPL_WINDOW = 512
HEAD_ROWS = 4


def parse_variant(name: str) -> QuantizationConfig | None:
    """``none``, or a mode (``int8``, ``int4``, ``int4-g64``, ``auto``) followed by ``+head`` (the LM head
    too), ``+float`` (float weights kept for larger batches) and ``+weight-only`` (activations kept in
    floating point), in any order."""
    if name == "none":
        return None
    base, *flags = name.split("+")
    mode, _, group = base.partition("-g")
    if set(flags) - {"head", "float", "weight-only"} or len(set(flags)) != len(flags):
        raise ValueError(f"variant {name!r}: only '+head', '+float' and '+weight-only' may follow the mode")
    size = int(group) if group else DEFAULT_INT4_GROUP_SIZE
    activations = "float" if "weight-only" in flags else "int8"
    return QuantizationConfig(mode, size, "head" in flags, "float" in flags, activations=activations)


def perplexity(
    model: Any, ids: list[int], device: torch.device, dtype: torch.dtype, kv_cache: str = "auto"
) -> float:
    """exp(mean next-token NLL) over non-overlapping windows, each a fresh prefill, keys and values
    rounded as a ``kv_cache`` cache stores them."""
    arch = model.arch
    block = 16
    kv_dtype = kv_cache_dtype(kv_cache, dtype)
    kv = allocate_kv_caches(
        arch.num_layers, arch.num_kv_heads, PPL_WINDOW // block, block, arch.head_dim, kv_dtype, device
    )
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, PPL_WINDOW):
            window = torch.tensor(ids[start : start + PPL_WINDOW], device=device)
            n = len(window)
            if n < 2:
                break
            pos = torch.arange(n, device=device)
            meta = AttentionMetadata.prefill_only(pos, [PrefillChunk(0, n, 0, None)])
            hidden = model.forward(window, pos, meta, kv)
            # The LM head in slices of a decode step's size: a tied quantized head serves only those.
            logits = torch.cat([model.compute_logits(h) for h in hidden.split(HEAD_ROWS)])
            nll += torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum").item()
            count += n - 1
    return math.exp(nll / count)


def make_engine(
    model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, kv_cache: str = "auto"
) -> LLMEngine:
    cache = CacheConfig(memory_bytes=256 << 20, enable_prefix_caching=False, dtype=kv_cache)
    return LLMEngine(model, tokenizer, EngineConfig(cache=cache), device, dtype, frozenset())


def greedy(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """In batches of ``HEAD_ROWS``, so that a tied quantized head decodes them (as at batch 1)."""
    return [
        out
        for i in range(0, len(prompts), HEAD_ROWS)
        for out in engine.generate(prompts[i : i + HEAD_ROWS], params)
    ]


def agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    same = sum(a == b for r, o in zip(reference, other, strict=True) for a, b in zip(r, o, strict=True))
    return same / sum(len(r) for r in reference)


def decode_run(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> dict[str, float | None]:
    """One batch of requests to the end; tokens/s over the steps that were pure decode."""
    meter = CpuMeter([os.getpid()])
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, SamplingParams(max_tokens, seed=i, ignore_eos=True))
    tokens, seconds = 0, 0.0
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        stats = engine.stats()
        if stats.last_batch_tokens == stats.last_batch_size:
            tokens += stats.last_batch_size
            seconds += elapsed
    return {"tok_s": tokens / seconds, "other_cores": meter.read()["other_cores"]}


def measure_speed(
    engines: dict[str, LLMEngine], prompts: list[list[int]], batches: list[int], rounds: int, max_tokens: int
) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, list[dict[str, float | None]]]] = {v: {b: [] for b in batches} for v in engines}
    names = list(engines)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b in batches:
            for v in order:
                runs[v][b].append(decode_run(engines[v], prompts[:b], max_tokens))
        print(f"round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for v, per_batch in runs.items():
        out[v] = {}
        for b, rs in per_batch.items():
            speeds = [float(x["tok_s"] or 0) for x in rs]
            base = [float(x["tok_s"] or 0) for x in runs[names[0]][b]]
            others = [x["other_cores"] for x in rs if x["other_cores"] is not None]
            out[v][b] = {
                "tok_s": round(statistics.median(speeds), 1),
                "tok_s_rounds": [round(x, 1) for x in speeds],
                # Each round's ratio to the first variant, measured minutes apart at most: steadier
                # than a ratio of medians when the machine's speed drifts.
                f"vs_{names[0]}": round(
                    statistics.median(x / y for x, y in zip(speeds, base, strict=True)), 2
                ),
                "other_cores": round(statistics.median(others), 2) if others else None,
            }
    return out


def format_table(payload: dict[str, Any]) -> str:
    batches = payload["batches"]
    head = ["variant", "weights MiB", *(f"tok/s b={b}" for b in batches), "perplexity", "agreement"]
    rows = [head]
    for v, res in payload["variants"].items():
        cells = [res["speed"][str(b)] for b in batches]
        ratio = f"vs_{payload['baseline']}"
        speed = [f"{c['tok_s']:.1f} ({c[ratio]:.2f}x)" for c in cells]
        mib = f"{res['weight_bytes'] / 2**20:.1f}"
        rows.append([v, mib, *speed, f"{res['perplexity']:.3f}", f"{res['agreement']:.3f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    m = payload["machine"]
    return "\n".join(
        [
            f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, {m['torch_threads']} "
            f"torch threads, torch {m['torch_version']}, {m['dtype']}, {m['device']}, ISA "
            f"{m['cpu_capability']} ({m['simulated_isa']})",
            f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}; "
            f"other processes' CPU during the speed runs (median): {payload['other_cores']} cores",
            "",
            *lines,
            "",
            f"agreement: identical tokens over the first {payload['agreement_tokens']} greedy tokens of "
            f"{len(AGREEMENT_PROMPTS)} prompts, vs 'none'; 'none' in float32 vs {m['dtype']}: "
            f"{payload['float32_agreement']}",
            f"(x): median over rounds of the ratio to '{payload['baseline']}' in the same round",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--variants", default="none,int8,int4", help="comma-separated (see the docstring)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request in speed runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    if args.threads:
        torch.set_num_threads(args.threads)
    chat = configured_chat_model(None, args.dtype)
    spec, device, dtype, tokenizer = chat.spec, chat.device, chat.dtype, chat.tokenizer
    batches = [int(b) for b in args.batches.split(",")]
    variants = args.variants.split(",")
    loadavg_before = os.getloadavg()

    def build(q: QuantizationConfig | None, dt: torch.dtype = dtype) -> Any:
        return chat.build(q, dt)

    models = {v: build(parse_variant(v)) for v in variants}
    engines = {v: make_engine(m, tokenizer, device, dtype) for v, m in models.items()}
    license_ids = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    params = SamplingParams(64, temperature=0.0, ignore_eos=True)
    prompt_ids = [tokenizer.encode(t) for t in AGREEMENT_PROMPTS]
    reference = greedy(make_engine(build(None), tokenizer, device, dtype), prompt_ids, params)
    float32 = make_engine(build(None, torch.float32), tokenizer, device, torch.float32)
    float32_agreement = round(agreement(reference, greedy(float32, prompt_ids, params)), 3)
    del float32
    results: dict[str, dict[str, Any]] = {}
    for v, model in models.items():
        results[v] = {
            "weight_bytes": weight_bytes(model),
            "perplexity": round(perplexity(model, license_ids, device, dtype), 4),
            "agreement": round(agreement(reference, greedy(engines[v], prompt_ids, params)), 3),
        }
    words = corpus_words(default_corpus())
    speed_prompts = [
        tokenizer.encode(pr.text)
        for pr in build_prompts(words, tokenizer, max(batches), 32, seed=0, prefix_tag="quantization")
    ]
    speed = measure_speed(engines, speed_prompts, batches, args.rounds, args.max_tokens)
    for v in variants:
        results[v]["speed"] = {str(b): s for b, s in speed[v].items()}
    payload = {
        **report.run_header("quantization", spec.name, device, dtype, loadavg_before),
        "batches": batches,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "perplexity_text": f"{default_corpus()} ({len(license_ids)} tokens, windows of {PPL_WINDOW})",
        "agreement_tokens": params.max_tokens,
        "float32_agreement": float32_agreement,
        "baseline": variants[0],
        "other_cores": statistics.median(
            s["other_cores"]
            for r in results.values()
            for s in r["speed"].values()
            if s["other_cores"] is not None
        ),
        "variants": results,
    }
    print(format_table(payload))
    print(f"results: {report.write_results(payload, name='quantization')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
