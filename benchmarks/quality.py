"""Quality of the chat model's reduced-precision variants against the float32 reference: perplexity on a
held-out text, and greedy agreement over a fixed prompt set.

Agreement is measured teacher-forced: float32 generates 64 greedy tokens per prompt; each variant then
reads prompt + that continuation in one prefill, and a position agrees when the variant's most likely
next token is float32's. Free-running greedy decoding is also reported (tokens identical to float32's
until the end), but one early divergence makes every later token differ there, so it says little.

A variant that keeps float weights beside the quantized ones (``+float``, ``auto``) is measured with
``keep_float`` off: its quantized half is what decodes at small batch sizes run, and its float half is
the reference's own weights, so measuring the pair would mostly measure float32 against itself.

Each variant stores keys and values as the engine's default cache does (bfloat16 under a float32 model:
the ``fp32`` variant measures that rounding alone); the reference keeps them in float32.

Targets (the default's): agreement ≥ 90% of tokens, perplexity within 5% of float32's.

    .venv/bin/python benchmarks/quality.py [--variants bf16,bf16+int8,bf16+int4,fp32+int8]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.quantization import AGREEMENT_PROMPTS, greedy, make_engine, parse_variant, perplexity
from benchmarks.workload import default_corpus
from shared_engine.attention import AttentionMetadata, PrefillChunk, allocate_kv_caches, kv_cache_dtype
from shared_engine.device import DTYPES
from shared_engine.sampling_params import SamplingParams

TOKENS = 64
AGREEMENT_TARGET, PERPLEXITY_TARGET = 0.90, 0.05
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse(name: str) -> tuple[torch.dtype, str]:
    """``bf16+int4`` → (bfloat16, "int4"); ``fp32`` → (float32, "none")."""
    dtype, _, quant = name.partition("+")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"variant {name!r}: start with one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[DTYPE_NAMES[dtype]], quant or "none"


def forced_argmax(model: Any, sequence: list[int], device: torch.device, dtype: torch.dtype) -> list[int]:
    """The model's most likely next token at every position of ``sequence``, in one prefill."""
    arch, block = model.arch, 16
    blocks = -(-len(sequence) // block)
    kv_dtype = kv_cache_dtype("auto", dtype)
    kv = allocate_kv_caches(
        arch.num_layers, arch.num_kv_heads, blocks, block, arch.head_dim, kv_dtype, device
    )
    ids = torch.tensor(sequence, device=device)
    pos = torch.arange(len(sequence), device=device)
    meta = AttentionMetadata.prefill_only(pos, [PrefillChunk(0, len(sequence), 0, None)])
    with torch.inference_mode():
        hidden = model.forward(ids, pos, meta, kv)
        return [int(t) for t in model.compute_logits(hidden).argmax(-1)]


def teacher_forced(
    model: Any, prompts: list[list[int]], reference: list[list[int]], device: torch.device, dtype: torch.dtype
) -> float:
    same = total = 0
    for prompt, continuation in zip(prompts, reference, strict=True):
        predicted = forced_argmax(model, prompt + continuation, device, dtype)
        # the prediction at position p is for token p + 1: the continuation starts at len(prompt)
        guesses = predicted[len(prompt) - 1 : len(prompt) - 1 + len(continuation)]
        same += sum(g == t for g, t in zip(guesses, continuation, strict=True))
        total += len(continuation)
    return same / total


def free_running(reference: list[list[int]], other: list[list[int]]) -> float:
    same = 0
    for r, o in zip(reference, other, strict=True):
        for a, b in zip(r, o, strict=True):
            if a != b:
                break
            same += 1
    return same / sum(len(r) for r in reference)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--variants", default="bf16,bf16+int8,bf16+int4,fp32+int8")
    args = p.parse_args(argv)
    chat = configured_chat_model(None, "float32")
    device, tokenizer = chat.device, chat.tokenizer
    text_ids = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    prompts = [tokenizer.encode(t) for t in AGREEMENT_PROMPTS]
    params = SamplingParams(TOKENS, temperature=0.0, ignore_eos=True)

    print("float32 reference ...", flush=True)
    fp32 = chat.build(None, torch.float32)
    # The reference keeps float32 keys and values too; every variant stores them as the default does.
    reference = greedy(make_engine(fp32, tokenizer, device, torch.float32, "float32"), prompts, params)
    fp32_ppl = perplexity(fp32, text_ids, device, torch.float32, "float32")
    del fp32
    rows: dict[str, dict[str, Any]] = {}
    for name in args.variants.split(","):
        print(f"{name} ...", flush=True)
        dtype, quant = parse(name)
        config = parse_variant(quant)
        config = config.for_device(device) if config is not None else None
        if config is not None and config.keep_float:
            config = dataclasses.replace(config, keep_float=False)
        model = chat.build(config, dtype)
        ppl = perplexity(model, text_ids, device, dtype)
        outputs = greedy(make_engine(model, tokenizer, device, dtype), prompts, params)
        rows[name] = {
            "measured": None if config is None else dataclasses.asdict(config),
            "perplexity": round(ppl, 4),
            "perplexity_vs_fp32": round(ppl / fp32_ppl - 1, 4),
            "agreement_teacher_forced": round(teacher_forced(model, prompts, reference, device, dtype), 4),
            "agreement_free_running": round(free_running(reference, outputs), 4),
        }
        r = rows[name]
        r["meets_targets"] = (
            r["agreement_teacher_forced"] >= AGREEMENT_TARGET and r["perplexity_vs_fp32"] <= PERPLEXITY_TARGET
        )
        del model
    print(f"\nfloat32 perplexity {fp32_ppl:.3f}; {len(prompts)} prompts x {TOKENS} greedy tokens")
    print(f"{'variant':<12} {'perplexity':>10} {'vs fp32':>8} {'agree forced':>13} {'agree free':>11}  ok")
    for name, r in rows.items():
        forced, free = r["agreement_teacher_forced"], r["agreement_free_running"]
        print(
            f"{name:<12} {r['perplexity']:>10.3f} {r['perplexity_vs_fp32']:>+8.2%} "
            f"{forced:>13.1%} {free:>11.1%}  {r['meets_targets']}"
        )
    payload = {
        "benchmark": "quality",
        "machine": report.machine_info(device, torch.float32),
        "model": chat.spec.name,
        "perplexity_text": f"{default_corpus().name} ({len(text_ids)} tokens)",
        "prompts": len(prompts),
        "tokens": TOKENS,
        "float32_perplexity": round(fp32_ppl, 4),
        "targets": {"agreement_teacher_forced": AGREEMENT_TARGET, "perplexity_vs_fp32": PERPLEXITY_TARGET},
        "variants": rows,
    }
    print(f"results: {report.write_results(payload, name='quality')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
