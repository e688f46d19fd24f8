"""The machine's roofline (matmul FLOP/s, memory bandwidth) and where the engine's decode stands on it.

- Matmul: ``torch.matmul`` of square matrices (``--square``, 2048³ by default) and of decode-shaped
  ones, ``[batch x hidden] @ [hidden x intermediate]`` of the chat model (576 x 1536 for
  SmolLM2-135M), in bfloat16 and float32; also the model's own linear layers at each batch size,
  with the kernels the engine uses (oneDNN-packed on a CPU; what one decode step multiplies: every
  layer's qkv, o, gate/up and down projections, and the LM head), in the engine's dtype. Each
  figure is the best of ``--reps`` timed runs, each of enough calls to last ``--min-time`` seconds,
  after a warm-up call.
- Memory bandwidth: copying a ``--bw-mib`` float32 tensor (bytes read + written per second) and
  summing it (bytes read per second); best of ``--reps``.
- Decode: ``LLMEngine.step()`` loops at each batch size (``--batches``, 1 and 32): that many requests
  of ``--prompt-len`` tokens of Python's LICENSE.txt, ``--output-len`` tokens each, greedy,
  ``ignore_eos``, prefix caching off; tokens/s counts the tokens generated after every request has its
  first token, over the time since then (pure decode). Median of ``--runs`` runs.

Achieved FLOP/s = 2 x params x tokens/s, with params the weights a decode token is multiplied by:
every linear layer and the LM head (the tied embedding matrix counted once, as the LM head; the
embedding lookup does no arithmetic), and without the LM head (non-embedding params); attention over
the KV cache is left out of both (its share is shown). The memory-bound ceiling of a decode step is
the bytes of those weights over the read bandwidth: batch-1 tokens/s can be no higher.

    .venv/bin/python benchmarks/roofline.py [--threads N] [--batches 1,32] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.noise import CpuMeter
from benchmarks.workload import default_corpus
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.sampling_params import SamplingParams

BLOCK_SIZE = 16
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, reps: int, min_time: float) -> float:
    """Seconds per call of ``fn``: the best of ``reps`` runs of enough calls to last ``min_time``."""
    fn()  # warm-up: kernel selection, first-touch of the output
    sync(device)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        calls = max(calls * 2, math.ceil(calls * 1.2 * min_time / max(elapsed, 1e-9)))
    best = elapsed / calls
    for _ in range(reps - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


@torch.inference_mode()
def matmul_flops(
    m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int, min_time: float
) -> dict[str, Any]:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = best_time(lambda: torch.matmul(a, b), device, reps, min_time)
    return {
        "shape": f"[{m}x{k}] @ [{k}x{n}]",
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "ms": round(seconds * 1e3, 4),
        "gflop_s": round(2 * m * k * n / seconds / 1e9, 2),
    }


@torch.inference_mode()
def bandwidth(mib: int, device: torch.device, reps: int, min_time: float) -> dict[str, Any]:
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    copy_s = best_time(lambda: dst.copy_(src), device, reps, min_time)
    read_s = best_time(lambda: src.sum(), device, reps, min_time)
    return {
        "mib": mib,
        "copy_gb_s": round(2 * nbytes / copy_s / 1e9, 2),  # read + write
        "read_gb_s": round(nbytes / read_s / 1e9, 2),  # torch.sum
    }


def projections(model: Any) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], int, int]]:
    """Every matrix a decode token is multiplied by, as the model itself applies it (plain
    ``nn.Linear``, oneDNN-packed or quantized layers): ``(apply, in_features, out_features)`` of each
    layer's projections, then of the LM head (the tied embedding matrix when the model has no head)."""
    layers = [
        m for name, m in model.named_modules() if hasattr(m, "in_features") and not name.startswith("lm_head")
    ]
    head = getattr(model, "lm_head", None)
    embed = model.model.embed_tokens.weight
    apply_head = head if head is not None else functools.partial(F.linear, weight=embed)
    return [(m, m.in_features, m.out_features) for m in layers] + [(apply_head, *reversed(embed.shape))]


def param_counts(model: Any) -> dict[str, int]:
    matrices = projections(model)
    arch = model.arch
    embed = model.model.embed_tokens.weight
    head = arch.vocab_size * arch.hidden_size
    layers = sum(i * o for _, i, o in matrices[:-1])
    # What stays a 1-d parameter once the projections are packed: the norms (and any biases)
    others = sum(p.numel() for name, p in model.named_parameters() if p is not embed and p.dim() == 1)
    non_embedding = layers + others
    return {
        # unique parameters: a tied embedding counts once
        "total": non_embedding + head * (1 if arch.tie_word_embeddings else 2),
        "non_embedding": non_embedding,  # without the embedding and the LM head
        "lm_head": head,
        "matmul": layers + head,  # what 2 x params x tok/s counts
    }


@torch.inference_mode()
def linears_step(
    model: Any, batch: int, dtype: torch.dtype, device: torch.device, reps: int, min_time: float
) -> dict[str, Any]:
    """Time of the model's own linear layers and LM head at ``batch`` rows, with their kernels: a decode
    step's matmuls with nothing else."""
    matrices = projections(model)
    inputs = [torch.randn(batch, i, device=device).to(dtype) for _, i, _ in matrices]

    def step() -> None:
        for x, (apply, _, _) in zip(inputs, matrices, strict=True):
            apply(x)

    seconds = best_time(step, device, reps, min_time)
    flops = 2 * batch * sum(i * o for _, i, o in matrices)
    return {
        "batch": batch,
        "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
        "matrices": len(matrices),
        "ms": round(seconds * 1e3, 4),
        "gflop_s": round(flops / seconds / 1e9, 2),
        "tok_s_bound": round(batch / seconds, 1),
    }


def decode_run(engine: LLMEngine, tag: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """All requests at once; tokens/s from the step where the last one got its first token to the end."""
    meter = CpuMeter([os.getpid()])
    ids = {f"{tag}-{i}" for i in range(len(prompts))}
    for i, ids_ in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", ids_, SamplingParams(output_len, temperature=0.0, ignore_eos=True))
    started = time.perf_counter()
    have_first: set[str] = set()
    decode_start: float | None = None
    tokens = steps = 0
    end = started
    while engine.has_unfinished_requests():
        outs = engine.step()
        end = time.perf_counter()
        if decode_start is not None:
            tokens += sum(len(o.token_ids) for o in outs)
            steps += 1
            continue
        have_first.update(o.request_id for o in outs)
        if have_first >= ids:
            decode_start = end
    if decode_start is None or end <= decode_start:
        raise RuntimeError("no decode steps: raise --output-len")
    return {
        "decode_tok_s": round(tokens / (end - decode_start), 2),
        "decode_tokens": tokens,
        "decode_steps": steps,
        "step_ms": round((end - decode_start) / steps * 1e3, 3),
        "prefill_s": round(decode_start - started, 3),
        "other_cores": meter.read()["other_cores"],
    }


def profile_decode(
    engine: LLMEngine, prompts: list[list[int]], output_len: int, steps: int, top: int = 15
) -> list[dict[str, Any]]:
    """torch.profiler over ``steps`` pure-decode steps of ``prompts`` at once: the operators that take
    the most time of their own, with their share of the profiled time."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(output_len, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add_request(f"profile-{i}", ids, params)
    for _ in range(3):  # the prefill and the first decodes
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
    for i in range(len(prompts)):
        engine.abort_request(f"profile-{i}")
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "calls_per_step": round(e.count / steps, 1),
            "self_ms_per_step": round(e.self_cpu_time_total / steps / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in events[:top]
    ]


def format_profile(rows: list[dict[str, Any]], batch: int) -> str:
    header = f"{'op':<40}{'calls/step':>11}{'ms/step':>10}{'share':>8}"
    lines = [f"torch.profiler, decode at batch {batch}: operators by own time", header]
    lines += [
        f"{r['op'][:39]:<40}{r['calls_per_step']:>11}{r['self_ms_per_step']:>10.2f}{r['share']:>8.1%}"
        for r in rows
    ]
    return "\n".join(lines)


def format_table(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    p = payload["params"]
    bw = payload["bandwidth"]
    lines = [
        f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, torch.get_num_threads() = "
        f"{m['torch_threads']}, torch {m['torch_version']}, engine {m['dtype']} on {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else ""),
        f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}; other "
        f"processes' CPU: {payload['microbench_other_cores']} cores during matmul/bandwidth, "
        f"{payload['decode_other_cores']} during decode (median)",
        "",
        "matmul (best of runs)                      dtype        ms      GFLOP/s",
    ]
    for r in payload["matmul"]:
        lines.append(
            f"  {r['op']:<8} {r['shape']:<31} {r['dtype']:<9} {r['ms']:>9.3f} {r['gflop_s']:>12,.1f}"
        )
    for r in payload["linears"]:
        label = f"all {r['matrices']} weight matrices, batch {r['batch']}"
        lines.append(f"  {'linears':<8} {label:<31} {r['dtype']:<9} {r['ms']:>9.3f} {r['gflop_s']:>12,.1f}")
    lines += [
        "",
        f"memory bandwidth ({bw['mib']} MiB float32): copy {bw['copy_gb_s']:,.1f} GB/s (read + write), "
        f"sum {bw['read_gb_s']:,.1f} GB/s (read)",
        "",
        f"params: {p['total'] / 1e6:.1f} M unique (tied embedding once), {p['non_embedding'] / 1e6:.1f} M "
        f"non-embedding, LM head {p['lm_head'] / 1e6:.1f} M; a decode token multiplies "
        f"{p['matmul'] / 1e6:.1f} M ({payload['weight_bytes'] / 2**20:.0f} MiB of weights per step)",
        "",
    ]
    head = [
        "batch", "decode tok/s", "step ms", "GFLOP/s all", "GFLOP/s non-emb", "% peak", "% shape",
        "% linears", "mem-bound tok/s", "% mem",
    ]  # fmt: skip
    rows = [head]
    for d in payload["decode"]:
        rows.append(
            [
                str(d["batch"]),
                f"{d['decode_tok_s']:,.1f}",
                f"{d['step_ms']:,.1f}",
                f"{d['achieved_gflop_s']:,.1f}",
                f"{d['achieved_gflop_s_non_embedding']:,.1f}",
                f"{d['fraction_of_peak'] * 100:.1f}",
                f"{d['fraction_of_shape_matmul'] * 100:.1f}",
                f"{d['fraction_of_linears'] * 100:.1f}",
                f"{d['memory_bound_tok_s']:,.1f}",
                f"{d['fraction_of_memory_bound'] * 100:.1f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [
        "",
        f"decode: {payload['prompt_len']}-token prompts, {payload['output_len']} output tokens, greedy, "
        f"median of {payload['runs']} runs; GFLOP/s all = 2 x {p['matmul'] / 1e6:.1f} M x tok/s "
        f"(non-emb: 2 x {p['non_embedding'] / 1e6:.1f} M); attention adds "
        f"~{payload['attention_share'] * 100:.0f}% more at the mean context, not counted.",
        f"% peak: of the best square matmul in {m['dtype']} ({payload['peak_gflop_s']:,.1f} GFLOP/s); "
        "% shape: of [batch x hidden] @ [hidden x intermediate];",
        "% linears: of the model's own linear layers at that batch (a step's matmuls alone); "
        "mem-bound: batch x read bandwidth / weight bytes.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="default: the model's configured device (auto)")
    p.add_argument("--dtype", default="auto", help="the engine's dtype")
    p.add_argument("--square", default="2048", help="comma-separated sizes of square matmuls")
    p.add_argument("--reps", type=int, default=5, help="timed runs per matmul / bandwidth figure")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds each timed run lasts at least")
    p.add_argument("--bw-mib", type=int, default=512, help="size of the bandwidth test tensor")
    p.add_argument("--batches", default="1,32", help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=3, help="decode runs per batch size (median)")
    p.add_argument("--profile-steps", type=int, default=8, help="decode steps profiled at the largest batch")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.output_len < 2 or args.runs < 1 or args.reps < 1:
        p.error("--output-len must be >= 2, --runs and --reps >= 1")
    print(f"torch.get_num_threads() = {torch.get_num_threads()}", flush=True)

    chat = configured_chat_model(args.device, args.dtype)
    spec, device, dtype, tokenizer = chat.spec, chat.device, chat.dtype, chat.tokenizer
    model = chat.build()
    arch = model.arch
    batches = [int(b) for b in args.batches.split(",")]
    loadavg_before = os.getloadavg()

    meter = CpuMeter([os.getpid()])
    dtypes = list(dict.fromkeys([torch.bfloat16, torch.float32, dtype]))
    matmul: list[dict[str, Any]] = []
    for size in (int(s) for s in args.square.split(",")):
        for dt in dtypes:
            matmul.append(
                {"op": "square", **matmul_flops(size, size, size, dt, device, args.reps, args.min_time)}
            )
    for b in batches:
        for dt in dtypes:
            shape = (b, arch.hidden_size, arch.intermediate_size)
            matmul.append(
                {"op": "decode", "batch": b, **matmul_flops(*shape, dt, device, args.reps, args.min_time)}
            )
    print("matmuls done", flush=True)
    linears = [linears_step(model, b, dtype, device, args.reps, args.min_time) for b in batches]
    bw = bandwidth(args.bw_mib, device, args.reps, args.min_time)
    micro_other_cores = meter.read()["other_cores"]
    print("bandwidth done", flush=True)

    params = param_counts(model)
    weight_bytes = params["matmul"] * dtype.itemsize
    corpus = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    span = len(corpus) - args.prompt_len
    if span < 1:
        p.error(f"--prompt-len must be below the corpus length ({len(corpus)} tokens)")
    prompts = [corpus[(i * 97) % span :][: args.prompt_len] for i in range(max(batches))]
    blocks = max(batches) * math.ceil((args.prompt_len + args.output_len) / BLOCK_SIZE) + 8
    cache = CacheConfig(block_size=BLOCK_SIZE, num_blocks=blocks, enable_prefix_caching=False)
    engine = LLMEngine(model, tokenizer, EngineConfig(cache=cache), device, dtype, frozenset())
    engine.generate(prompts[: max(batches)], SamplingParams(4, temperature=0.0, ignore_eos=True))  # warm-up

    peak = max(r["gflop_s"] for r in matmul if r["op"] == "square" and r["dtype"] == DTYPE_NAMES[dtype])
    mean_ctx = args.prompt_len + args.output_len / 2
    attention_flops = 4 * arch.num_layers * arch.num_heads * arch.head_dim * mean_ctx  # QK^T and PV
    decode: list[dict[str, Any]] = []
    for b in batches:
        runs = []
        for r in range(args.runs):
            runs.append(decode_run(engine, f"b{b}-r{r}", prompts[:b], args.output_len))
            print(f"batch {b} run {r + 1}/{args.runs}: {runs[-1]['decode_tok_s']:,.1f} tok/s", flush=True)
        tok_s = statistics.median(x["decode_tok_s"] for x in runs)
        achieved = 2 * params["matmul"] * tok_s / 1e9
        shape = next(
            x["gflop_s"]
            for x in matmul
            if x["op"] == "decode" and x["batch"] == b and x["dtype"] == DTYPE_NAMES[dtype]
        )
        lin = next(x for x in linears if x["batch"] == b)
        mem_bound = b * bw["read_gb_s"] * 1e9 / weight_bytes
        decode.append(
            {
                "batch": b,
                "decode_tok_s": round(tok_s, 2),
                "step_ms": round(statistics.median(x["step_ms"] for x in runs), 3),
                "achieved_gflop_s": round(achieved, 2),
                "achieved_gflop_s_non_embedding": round(2 * params["non_embedding"] * tok_s / 1e9, 2),
                "fraction_of_peak": round(achieved / peak, 4),
                "fraction_of_shape_matmul": round(achieved / shape, 4),
                "fraction_of_linears": round(achieved / lin["gflop_s"], 4),
                "memory_bound_tok_s": round(mem_bound, 1),
                "fraction_of_memory_bound": round(tok_s / mem_bound, 4),
                "runs": runs,
            }
        )
    others = [r["other_cores"] for d in decode for r in d["runs"] if r["other_cores"] is not None]
    payload = {
        **report.run_header("roofline", spec.name, device, dtype, loadavg_before),
        "reps": args.reps,
        "min_time_s": args.min_time,
        "matmul": matmul,
        "linears": linears,
        "bandwidth": bw,
        "microbench_other_cores": micro_other_cores,
        "params": params,
        "weight_bytes": weight_bytes,
        "peak_gflop_s": peak,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "runs": args.runs,
        "attention_flops_per_token": round(attention_flops),
        "attention_share": round(attention_flops / (2 * params["matmul"]), 4),
        "decode": decode,
        "decode_other_cores": statistics.median(others) if others else None,
    }
    if args.profile_steps:
        b = max(batches)
        payload["profile"] = {
            "batch": b,
            "steps": args.profile_steps,
            "ops": profile_decode(engine, prompts[:b], args.output_len, args.profile_steps),
        }
    print()
    print(format_table(payload))
    if args.profile_steps:
        print()
        print(format_profile(payload["profile"]["ops"], payload["profile"]["batch"]))
    print(f"results: {report.write_results(payload, name='roofline')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
