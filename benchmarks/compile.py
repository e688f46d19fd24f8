"""Does ``torch.compile`` make the engine's decode step faster? Eager against compiled, same weights.

The model is built once (the packaged chat model, as ``benchmarks/roofline.py`` builds it) and each
variant runs in its own ``LLMEngine`` over its own copy, without touching the engine's code:

- ``eager``: the model as the engine runs it.
- ``forward``: the whole ``model.forward`` (all layers, paged attention included) compiled with
  ``dynamic=True``, called for pure-decode steps only; steps with a prefill chunk run eagerly (their
  Python list of chunks would compile one graph per chunk layout).
- ``forward-all``: the same compiled forward for every step, prefills too (recompiles per layout).
- ``mlp``: per layer, only the MLP and the two RMSNorms compiled (``module.compile(dynamic=True)``):
  the parts without data-dependent Python; attention stays eager.

Each compiled variant runs with each of ``--modes`` (``default``, ``max-autotune-no-cudagraphs``, ...).
Compilation is lazy: the warm-up (a short generation at each batch size) compiles, and its wall time
minus the eager warm-up's is the compile cost, cold by default (a fresh inductor cache directory).
Graphs, graph breaks (``torch._dynamo.utils.counters``) and recompiles (the ``recompiles`` log, with
the guard that failed) are counted per variant, in the warm-up and after it.

Decode: ``--batches`` requests at once of ``--prompt-len`` tokens of Python's LICENSE.txt,
``--output-len`` tokens each, greedy, ``ignore_eos``, prefix caching off; tokens/s counts the tokens
generated after every request has its first token (pure decode). Variants are interleaved over
``--rounds`` rounds (the order rotating each round); the median is reported, with the CPU other
processes took during each run (``benchmarks.noise.CpuMeter``).

Correctness: the greedy tokens of each compiled variant against eager's, in the engine's dtype (from
the first timed round; bfloat16 may differ by rounding), and exactly in ``--check-dtype`` (float32 by
default: a second set of models and compiles) on ``--check-prompts`` prompts of different lengths.

    .venv/bin/python benchmarks/compile.py [--threads 1] [--variants forward,mlp] [--modes default]

The parts: ``compile_variants`` (the model copies), ``compile_timing`` (warm-ups, interleaved rounds,
medians), ``compile_check`` (greedy agreement with eager), ``compile_dynamo`` (graphs, breaks,
recompiles), ``compile_report`` (the table); this script parses the options and runs them in order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch._dynamo

from benchmarks import report
from benchmarks.chat_model import ChatModel, configured_chat_model
from benchmarks.compile_check import check_prompts, correctness_check
from benchmarks.compile_dynamo import RecompileLog, capture_recompiles, configure
from benchmarks.compile_report import format_table
from benchmarks.compile_timing import (
    DecodeWorkload,
    Runs,
    other_cores,
    summarize_variant,
    timed_rounds,
    warm_up_variants,
)
from benchmarks.compile_variants import KINDS, Variant, VariantSpec, variant_specs
from benchmarks.offline_engine import corpus_ids, decode_prompts, kv_blocks
from shared_engine.device import resolve_dtype
from shared_engine.models.base import DecoderModel


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's)")
    p.add_argument("--device", default=None, help="default: the model's configured device (auto)")
    p.add_argument("--dtype", default="bfloat16", help="the engine's dtype (auto: the engine's choice)")
    p.add_argument("--variants", default="forward,mlp", help=f"compiled variants: {', '.join(KINDS)}")
    p.add_argument("--modes", default="default", help="torch.compile modes, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--freezing", action="store_true", help="torch._inductor.config.freezing = True")
    p.add_argument("--batches", default="1,32", help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (median)")
    p.add_argument("--warmup-tokens", type=int, default=4, help="output tokens of each warm-up generation")
    p.add_argument("--check-dtype", default="float32", help="dtype of the exact check ('none' to skip)")
    p.add_argument("--check-prompts", type=int, default=4, help="prompts in the check, of different lengths")
    p.add_argument("--check-tokens", type=int, default=32, help="output tokens per prompt in the check")
    p.add_argument(
        "--recompile-limit",
        type=int,
        default=64,
        help="torch._dynamo.config.recompile_limit (torch's default is 8): the variants share code "
        "objects (MLP.forward, RMSNorm.forward, ...), whose cache entries add up in one process",
    )
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (default: fresh)")
    p.add_argument("--dynamo-logs", action="store_true", help="also print dynamo's recompile log to stderr")
    args = p.parse_args(argv)
    if args.output_len < 2 or args.rounds < 1 or args.warmup_tokens < 2:
        p.error("--output-len and --warmup-tokens must be >= 2, --rounds >= 1")
    return args, p


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    cache_dir = None if args.warm_cache else tempfile.mkdtemp(prefix="torchinductor-compile-bench-")
    if cache_dir is not None:  # a cold compile: nothing from earlier runs (removed afterwards)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        return run(args, p)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    configure(args.recompile_limit, args.freezing)
    log = capture_recompiles(echo=args.dynamo_logs)
    print(f"torch.get_num_threads() = {torch.get_num_threads()}, torch {torch.__version__}", flush=True)

    chat = configured_chat_model(args.device, args.dtype)
    model = chat.build()
    batches = [int(b) for b in args.batches.split(",")]
    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    specs = variant_specs(kinds, modes)
    loadavg_before = os.getloadavg()

    corpus = corpus_ids(chat.tokenizer)
    if len(corpus) <= args.prompt_len:
        p.error(f"--prompt-len must be below the corpus length ({len(corpus)} tokens)")
    work = DecodeWorkload(
        tokenizer=chat.tokenizer,
        device=chat.device,
        dtype=chat.dtype,
        prompts=decode_prompts(corpus, max(batches), args.prompt_len),
        batches=batches,
        blocks=kv_blocks(max(batches), args.prompt_len, args.output_len),
        output_len=args.output_len,
        warmup_tokens=args.warmup_tokens,
    )
    # Each variant gets its own modules, built from the weights before anything is compiled (a copy of a
    # built model cannot be taken: oneDNN-packed weights have no storage to copy).
    variants = [Variant("eager", "eager", "default", model)]
    variants += [Variant(name, kind, mode, chat.build()) for name, kind, mode in specs]
    results: dict[str, dict[str, Any]] = {"eager": {"name": "eager", "kind": "eager", "mode": "-"}}
    results |= {name: {"name": name, "kind": kind, "mode": mode} for name, kind, mode in specs}
    engines = warm_up_variants(variants, work, log, results)
    runs = timed_rounds(engines, work, args.rounds, log)
    for name in engines:
        summarize_variant(results[name], name, runs, batches, log)

    check: dict[str, Any] = {}
    if args.check_dtype != "none":
        ok_specs = [s for s in specs if s[0] in engines]
        check = exact_check(args, chat, model, corpus, ok_specs, log)
    payload = {
        **report.run_header("compile", chat.spec.name, chat.device, chat.dtype, loadavg_before),
        **settings(args, chat.dtype, batches, modes),
        **cpu_noise(runs),
        "variants": list(results.values()),
        "check": check,
    }
    print()
    print(format_table(payload))
    print(f"results: {report.write_results(payload, name='compile')}")
    return 0


def exact_check(
    args: argparse.Namespace,
    chat: ChatModel,
    model: DecoderModel,
    corpus: list[int],
    specs: list[VariantSpec],
    log: RecompileLog,
) -> dict[str, Any]:
    """The correctness check in ``--check-dtype``: on the engine's model when that is its dtype, else on a
    second copy loaded in it."""
    check_dtype = resolve_dtype(args.check_dtype, chat.device)
    print(f"correctness check in {check_dtype} ...", flush=True)

    def build() -> DecoderModel:
        return chat.build(dtype=check_dtype)

    check_model = model if check_dtype == chat.dtype else build()
    prompts = check_prompts(corpus, args.check_prompts, args.prompt_len)
    return correctness_check(
        check_model, build, specs, chat.tokenizer, prompts, args.check_tokens, chat.device, check_dtype, log
    )


def settings(
    args: argparse.Namespace, dtype: torch.dtype, batches: list[int], modes: list[str]
) -> dict[str, Any]:
    """What the run was asked to do, as the results record it."""
    return {
        "dtype_name": str(dtype).removeprefix("torch."),
        "batches": batches,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "rounds": args.rounds,
        "warmup_tokens": args.warmup_tokens,
        "modes": modes,
        "freezing": args.freezing,
        "cold_cache": not args.warm_cache,
        "recompile_limit": torch._dynamo.config.recompile_limit,
    }


def cpu_noise(runs: Runs) -> dict[str, Any]:
    others = other_cores(runs)
    return {
        "other_cores_median": statistics.median(others) if others else None,
        "other_cores_max": max(others) if others else None,
    }


if __name__ == "__main__":
    sys.exit(main())
