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
the bytes of weights a step reads — at each batch size by the path each layer takes there (with
``quantization = "auto"`` the int4 copies at one or two rows, the float weights above) — over the read
bandwidth: batch-1 tokens/s can be no higher. ``--quantization`` (default: the configured model's).

    .venv/bin/python benchmarks/roofline.py [--threads N] [--batches 1,32] [--runs 3]

The parts: ``roofline_microbench`` (matmuls, bandwidth), ``roofline_model`` (what a decode token
multiplies), ``roofline_decode`` (decode runs, their place on the roofline, the profile) and
``roofline_report`` (the table); this script parses the options and runs them in order.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.offline_engine import corpus_ids, decode_prompts, greedy, kv_blocks, make_engine
from benchmarks.quantization import parse_variant
from benchmarks.roofline_decode import decode_point, decode_runs, profile_decode
from benchmarks.roofline_microbench import DTYPE_NAMES, measure_machine
from benchmarks.roofline_model import attention_flops, param_counts, weight_bytes_read
from benchmarks.roofline_report import format_profile, format_table
from shared_engine.config import KV_CACHE_DTYPES

WARMUP_TOKENS = 4


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="default: the model's configured device (auto)")
    p.add_argument("--dtype", default="auto", help="the engine's dtype")
    p.add_argument(
        "--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES, help="what the KV cache stores"
    )
    p.add_argument("--square", default="2048", help="comma-separated sizes of square matmuls")
    p.add_argument("--reps", type=int, default=5, help="timed runs per matmul / bandwidth figure")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds each timed run lasts at least")
    p.add_argument("--bw-mib", type=int, default=512, help="size of the bandwidth test tensor")
    p.add_argument("--batches", default="1,32", help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=3, help="decode runs per batch size (median)")
    p.add_argument("--profile-steps", type=int, default=8, help="decode steps profiled at the largest batch")
    p.add_argument(
        "--quantization", default="config",
        help="'config' (as models.toml has it) or a variant of benchmarks/quantization.py (none, auto, ...)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.output_len < 2 or args.runs < 1 or args.reps < 1:
        p.error("--output-len must be >= 2, --runs and --reps >= 1")
    return args, p


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    print(f"torch.get_num_threads() = {torch.get_num_threads()}", flush=True)

    chat = configured_chat_model(args.device, args.dtype)
    device, dtype, tokenizer = chat.device, chat.dtype, chat.tokenizer
    quantization = chat.spec.quantization_config if args.quantization == "config" else None
    if args.quantization != "config":
        quantization = parse_variant(args.quantization)
    model = chat.build(quantization)
    batches = [int(b) for b in args.batches.split(",")]
    loadavg_before = os.getloadavg()

    squares = [int(s) for s in args.square.split(",")]
    machine = measure_machine(model, squares, batches, dtype, device, args.reps, args.min_time, args.bw_mib)
    params = param_counts(model)
    bytes_read = {b: weight_bytes_read(model, b, dtype) for b in batches}
    corpus = corpus_ids(tokenizer)
    if len(corpus) <= args.prompt_len:
        p.error(f"--prompt-len must be below the corpus length ({len(corpus)} tokens)")
    prompts = decode_prompts(corpus, max(batches), args.prompt_len)
    blocks = kv_blocks(max(batches), args.prompt_len, args.output_len)
    engine = make_engine(model, tokenizer, device, dtype, blocks, kv_cache_dtype=args.kv_cache_dtype)
    engine.generate(prompts[: max(batches)], greedy(WARMUP_TOKENS))

    attention = attention_flops(model.arch, args.prompt_len + args.output_len / 2)  # at the mean context
    dtype_name = DTYPE_NAMES[dtype]
    decode = []
    for b in batches:
        runs = decode_runs(engine, b, prompts, args.output_len, args.runs)
        decode.append(decode_point(b, runs, params, bytes_read[b], machine, dtype_name))
    others = [r["other_cores"] for d in decode for r in d["runs"] if r["other_cores"] is not None]
    payload: dict[str, Any] = {
        **report.run_header("roofline", chat.spec.name, device, dtype, loadavg_before),
        "kv_cache_dtype": str(engine.runner.kv_caches[0].dtype).removeprefix("torch."),
        "reps": args.reps,
        "min_time_s": args.min_time,
        "matmul": machine.matmul,
        "linears": machine.linears,
        "bandwidth": machine.bandwidth,
        "microbench_other_cores": machine.other_cores,
        "params": params,
        "quantization": args.quantization if quantization is None else quantization.mode,
        "weight_bytes_read": bytes_read,
        "peak_gflop_s": machine.peak_gflop_s(dtype_name),
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "runs": args.runs,
        "attention_flops_per_token": round(attention),
        "attention_share": round(attention / (2 * params["matmul"]), 4),
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
