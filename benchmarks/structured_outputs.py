"""Structured outputs: what the grammar costs and whether it holds, on the configured chat model.

Three measures, each on the offline engine (the same ``LLMEngine.step`` the server runs):

* **throughput** — 32 streams decoding ``--max-tokens`` tokens each, without a constraint and with a
  JSON schema whose answers cannot end sooner (an array of at least 1000 strings), in interleaved rounds;
  output tokens/s of each, and the ratio (target: the constrained run keeps >= 85%).
* **compile** — the time to compile each of a set of schemas never seen before (a cache miss), and to
  fetch one already compiled.
* **validity** — a fixed set of schemas x prompts x temperatures, all queued at once: how many answers end
  with ``stop`` and how many of those parse and validate against their schema (must be all of them).

    .venv/bin/python benchmarks/structured_outputs.py [--streams 32] [--max-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema
import torch

from benchmarks import report
from benchmarks.chat_model import ChatModel, configured_chat_model
from benchmarks.noise import CpuMeter
from benchmarks.offline_engine import corpus_ids, decode_prompts, rotation
from benchmarks.structured_schemas import ENDLESS, PROMPTS, SCHEMAS, TOPICS
from pipelines.llm.pipeline import structured_outputs
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.guided import GuidedDecoding
from shared_engine.llm_engine import LLMEngine
from shared_engine.sampling_params import SamplingParams
from shared_engine.structured_output import MaskTiming, StructuredOutputs

TEMPERATURES = (0.0, 0.7, 1.2)


def make_engine(model: Any, chat: ChatModel, structured: StructuredOutputs, blocks: int) -> LLMEngine:
    config = EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=blocks, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=2048),
    )
    eos = frozenset({chat.tokenizer.eos_token_id})
    return LLMEngine(model, chat.tokenizer, config, chat.device, chat.dtype, eos, structured=structured)


class Batch(NamedTuple):
    results: list[tuple[list[int], str]]  # (tokens, finish reason) per prompt
    seconds: float  # wall time
    cpu_seconds: float  # this process's CPU time: what other processes on the machine change least


def run_batch(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> Batch:
    """Every prompt at once, to the end."""
    ids = [f"b{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    cpu_start = time.process_time()
    for rid, prompt, p in zip(ids, prompts, params, strict=True):
        engine.add_request(rid, prompt, p)
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    reasons: dict[str, str] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
            if out.finish_reason is not None:
                reasons[out.request_id] = out.finish_reason.value
    results = [(tokens[r], reasons[r]) for r in ids]
    return Batch(results, time.perf_counter() - start, time.process_time() - cpu_start)


def throughput(
    args: argparse.Namespace, chat: ChatModel, model: Any, structured: StructuredOutputs
) -> dict[str, Any]:
    prompts = decode_prompts(corpus_ids(chat.tokenizer), args.streams, args.prompt_len)
    engine = make_engine(
        model, chat, structured, args.streams * ((args.prompt_len + args.max_tokens) // 16 + 2) + 8
    )
    plain = SamplingParams(args.max_tokens, temperature=0.8, seed=1, ignore_eos=True)
    configs = {
        "unconstrained": plain,
        "json_schema": SamplingParams(
            args.max_tokens,
            temperature=0.8,
            seed=1,
            ignore_eos=True,
            guided=GuidedDecoding.json_schema(ENDLESS),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in configs}
    cpu_rates: dict[str, list[float]] = {name: [] for name in configs}
    run_batch(engine, prompts[:4], [plain] * 4)  # warm-up
    before, constrained_s = replace(structured.timing), 0.0
    for r in range(args.rounds):
        for name in rotation(list(configs), r):
            batch = run_batch(engine, prompts, [configs[name]] * len(prompts))
            produced = sum(len(t) for t, _ in batch.results)
            assert produced == args.streams * args.max_tokens, f"{name}: a request ended early"
            rates[name].append(produced / batch.seconds)
            cpu_rates[name].append(produced / batch.cpu_seconds)
            constrained_s += batch.seconds if name == "json_schema" else 0.0
            print(
                f"  round {r + 1} {name:13s} {rates[name][-1]:7.1f} tok/s"
                f" ({cpu_rates[name][-1]:6.1f} per CPU-second)",
                flush=True,
            )
    best = {name: max(values) for name, values in rates.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_rates.items()}
    ratio = best["json_schema"] / best["unconstrained"]
    return {
        "streams": args.streams,
        "max_tokens": args.max_tokens,
        "prompt_len": args.prompt_len,
        "tok_s": rates,
        "tok_per_cpu_s": cpu_rates,
        "best_tok_s": {k: round(v, 1) for k, v in best.items()},
        "median_tok_s": {k: round(v, 1) for k, v in median.items()},
        "median_tok_per_cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "ratio": round(ratio, 3),
        "ratio_of_medians": round(median["json_schema"] / median["unconstrained"], 3),
        "ratio_per_cpu_s": round(cpu["json_schema"] / cpu["unconstrained"], 3),
        "target": 0.85,
        "met": ratio >= 0.85,
        "mask": mask_costs(before, structured.timing, constrained_s),
    }


def mask_costs(before: MaskTiming, after: MaskTiming, seconds: float) -> dict[str, float]:
    """Per constrained step: the mean step, the fill (in the helper thread, hidden behind the forward pass
    unless the engine had to wait for it), the wait, and the apply; and the share of the step the mask
    cost the engine thread (wait + apply)."""
    steps = max(1, after.steps - before.steps)

    def per_step(field: str) -> float:
        return round((getattr(after, field) - getattr(before, field)) * 1e3 / steps, 3)

    step_ms = seconds * 1e3 / steps
    engine_ms = per_step("wait_s") + per_step("apply_s")
    return {
        "steps": steps,
        "step_ms": round(step_ms, 2),
        "fill_ms": per_step("fill_s"),
        "wait_ms": per_step("wait_s"),
        "apply_ms": per_step("apply_s"),
        "engine_share": round(engine_ms / step_ms, 4),
    }


def compile_times(chat: ChatModel, vocab_size: int) -> dict[str, Any]:
    fresh = structured_outputs(
        chat.tokenizer, vocab_size, frozenset({chat.tokenizer.eos_token_id}), chat.device
    )
    miss: dict[str, float] = {}
    for name, schema in SCHEMAS.items():
        start = time.perf_counter()
        fresh.compile(GuidedDecoding.json_schema(schema))
        miss[name] = (time.perf_counter() - start) * 1e3
        print(f"  compile {name:15s} {miss[name]:7.2f} ms", flush=True)
    start = time.perf_counter()
    for schema in SCHEMAS.values():
        fresh.compile(GuidedDecoding.json_schema(schema))
    hit_ms = (time.perf_counter() - start) * 1e3 / len(SCHEMAS)
    values = list(miss.values())
    return {
        "new_schema_ms": {k: round(v, 2) for k, v in miss.items()},
        "new_schema_ms_median": round(statistics.median(values), 2),
        "new_schema_ms_max": round(max(values), 2),
        "cached_ms": round(hit_ms, 4),
    }


def validity(
    args: argparse.Namespace, chat: ChatModel, model: Any, structured: StructuredOutputs
) -> dict[str, Any]:
    tok = chat.tokenizer
    cases, prompts, params = [], [], []
    for name, schema in SCHEMAS.items():
        guided = GuidedDecoding.json_schema(schema)
        for i, (template, topic) in enumerate(zip(PROMPTS, TOPICS, strict=True)):
            for t in TEMPERATURES:
                text = tok.apply_chat_template(
                    [{"role": "user", "content": template.format(topic)}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                prompts.append(tok(text, add_special_tokens=False)["input_ids"])
                params.append(SamplingParams(args.validity_max_tokens, temperature=t, seed=i, guided=guided))
                cases.append((name, t))
    engine = make_engine(model, chat, structured, len(prompts) * ((200 + args.validity_max_tokens) // 16 + 2))
    results, seconds, _ = run_batch(engine, prompts, params)
    by: dict[str, dict[str, int]] = {}
    for (name, t), (tokens, reason) in zip(cases, results, strict=True):
        row = by.setdefault(f"{name}@{t}", {"answers": 0, "stop": 0, "length": 0, "valid": 0})
        row["answers"] += 1
        row[reason] = row.get(reason, 0) + 1
        if reason == "stop":
            try:
                jsonschema.validate(json.loads(tok.decode(tokens, skip_special_tokens=True)), SCHEMAS[name])
                row["valid"] += 1
            except (ValueError, jsonschema.ValidationError) as exc:
                print(f"  INVALID {name}@{t}: {exc}", flush=True)
    stop = sum(r["stop"] for r in by.values())
    valid = sum(r["valid"] for r in by.values())
    print(f"  {len(results)} answers in {seconds:.1f} s: {stop} stop, {valid} valid", flush=True)
    return {
        "answers": len(results),
        "stop": stop,
        "valid": valid,
        "valid_share_of_stop": round(valid / stop, 4) if stop else None,
        "max_tokens": args.validity_max_tokens,
        "temperatures": TEMPERATURES,
        "by_schema_and_temperature": by,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per stream in the throughput runs")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--validity-max-tokens", type=int, default=160)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    loadavg = os.getloadavg()
    chat = configured_chat_model(dtype=args.dtype)
    model = chat.build()
    vocab = model.arch.vocab_size
    structured = structured_outputs(
        chat.tokenizer, vocab, frozenset({chat.tokenizer.eos_token_id}), chat.device
    )
    meter = CpuMeter([os.getpid()])
    print("compile:", flush=True)
    compiled = compile_times(chat, vocab)
    print("validity:", flush=True)
    valid = validity(args, chat, model, structured)
    print(f"throughput ({args.streams} streams):", flush=True)
    rate = throughput(args, chat, model, structured)
    payload = {
        **report.run_header("structured_outputs", chat.spec.name, chat.device, chat.dtype, loadavg),
        "threads": torch.get_num_threads(),
        "cpu_noise": meter.read(),
        "compile": compiled,
        "validity": valid,
        "throughput": rate,
    }
    mask = rate["mask"]
    print(f"constrained/unconstrained at {args.streams} streams: {rate['ratio']:.3f} (target 0.85)")
    print(
        f"mask per step: fill {mask['fill_ms']} ms (helper thread), wait {mask['wait_ms']} ms,"
        f" apply {mask['apply_ms']} ms, of a {mask['step_ms']} ms step"
    )
    print(f"results: {report.write_results(payload, args.results_dir, name='structured_outputs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
