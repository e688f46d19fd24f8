"""The compile benchmark's timed part: each variant's warm-up (where compiling happens, so its wall time
minus eager's is the compile cost), decode rounds interleaved across the variants, and each variant's
medians against eager's."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.compile_check import agreement
from benchmarks.compile_dynamo import RecompileLog, dynamo_delta, dynamo_snapshot
from benchmarks.compile_variants import Variant, make_engine
from benchmarks.decode_timing import time_decode
from benchmarks.offline_engine import greedy, rotation
from shared_engine.llm_engine import LLMEngine

Runs = dict[str, dict[int, list[dict[str, Any]]]]  # variant -> batch size -> one dict per round


@dataclass(frozen=True)
class DecodeWorkload:
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    prompts: list[list[int]]  # as many as the largest batch; a batch of b takes the first b
    batches: list[int]
    blocks: int  # KV blocks of each engine
    output_len: int
    warmup_tokens: int


def decode_run(engine: LLMEngine, tag: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """All requests at once; tokens/s from the step where the last one got its first token to the end.
    Also the token ids generated, per request."""
    t = time_decode(engine, tag, prompts, output_len)
    return {
        "decode_tok_s": t.decode_tok_s,
        "step_ms": t.step_ms,
        "decode_steps": t.decode_steps,
        "prefill_s": t.prefill_s,
        "our_cores": t.cpu["our_cores"],
        "other_cores": t.cpu["other_cores"],
        "token_ids": t.token_ids,
    }


def warm_up(
    engine: LLMEngine, prompts: list[list[int]], batches: list[int], tokens: int, log: RecompileLog, tag: str
) -> dict[str, Any]:
    """A short generation at each batch size (this is where compiling happens); its wall time and what
    dynamo did."""
    log.tag = tag
    before = dynamo_snapshot()
    start = time.perf_counter()
    for b in batches:
        engine.generate(prompts[:b], greedy(tokens))
    return {"warmup_s": round(time.perf_counter() - start, 2), **dynamo_delta(before, dynamo_snapshot())}


def warm_up_variants(
    variants: list[Variant], work: DecodeWorkload, log: RecompileLog, results: dict[str, dict[str, Any]]
) -> dict[str, LLMEngine]:
    """An engine per variant, warmed up (eager first: the others' compile cost is measured against it);
    what each warm-up did goes into ``results``. A variant that fails is reported and left out."""
    engines: dict[str, LLMEngine] = {}
    for v in variants:
        engines[v.name] = make_engine(v, work.tokenizer, work.blocks, work.device, work.dtype)
        print(f"warm-up {v.name} ...", flush=True)
        try:
            results[v.name].update(
                warm_up(engines[v.name], work.prompts, work.batches, work.warmup_tokens, log, v.name)
            )
        except Exception as e:  # report the failure, time the others
            results[v.name]["error"] = f"{type(e).__name__}: {e}"
            print(f"  {v.name} failed: {results[v.name]['error']}", flush=True)
            del engines[v.name]
            continue
        r = results[v.name]
        r["recompiles"] = log.count(v.name)
        if v.name != "eager":
            r["compile_s"] = round(r["warmup_s"] - results["eager"]["warmup_s"], 2)
        print(f"  {r['warmup_s']:.1f} s, {r['graphs']} graphs, {r['recompiles']} recompiles", flush=True)
    return engines


def timed_rounds(engines: dict[str, LLMEngine], work: DecodeWorkload, rounds: int, log: RecompileLog) -> Runs:
    """``rounds`` rounds of every batch size on every engine, the order of the engines rotating."""
    runs: Runs = {name: {b: [] for b in work.batches} for name in engines}
    names = list(engines)
    for rnd in range(rounds):
        order = rotation(names, rnd)
        for b in work.batches:
            for name in order:
                log.tag = f"{name} (timed)"
                run = decode_run(engines[name], f"{name}-b{b}-r{rnd}", work.prompts[:b], work.output_len)
                runs[name][b].append(run)
                print(
                    f"round {rnd + 1}/{rounds} batch {b} {name}: {run['decode_tok_s']:,.1f} tok/s "
                    f"(others {run['other_cores']} cores)",
                    flush=True,
                )
    return runs


def summarize_variant(
    r: dict[str, Any], name: str, runs: Runs, batches: list[int], log: RecompileLog
) -> None:
    """Add to ``r`` the variant's recompiles after the warm-up, its medians per batch size (with the ratio
    to eager's) and, for a compiled variant, how its first round's tokens agree with eager's."""
    r["recompiles_after_warmup"] = log.count(f"{name} (timed)")
    r["recompile_reasons"] = log.reasons(name, f"{name} (timed)")
    r["decode"] = {}
    r["agreement"] = {}
    for b in batches:
        tok_s = statistics.median(x["decode_tok_s"] for x in runs[name][b])
        eager = statistics.median(x["decode_tok_s"] for x in runs["eager"][b]) if "eager" in runs else None
        r["decode"][str(b)] = {
            "decode_tok_s": round(tok_s, 2),
            "step_ms": round(statistics.median(x["step_ms"] for x in runs[name][b]), 3),
            "speedup": round(tok_s / eager, 3) if eager else None,
            "runs": [{k: v for k, v in x.items() if k != "token_ids"} for x in runs[name][b]],
        }
        if name != "eager" and "eager" in runs:
            r["agreement"][str(b)] = agreement(
                runs[name][b][0]["token_ids"], runs["eager"][b][0]["token_ids"]
            )


def other_cores(runs: Runs) -> list[float]:
    """The CPU other processes took during each timed run, where known."""
    return [
        x["other_cores"]
        for rs in runs.values()
        for b in rs.values()
        for x in b
        if x["other_cores"] is not None
    ]
