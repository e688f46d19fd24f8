"""Decode speed of the chat model (``quantization = "auto"``) at several batch sizes with the dual layers'
row limit fixed at each of several values, beside the limit its build measured
(``shared_engine/kernel_rows.py``): up to that many rows a step runs the int4 copies, past it the float
weights. Tokens/s through ``LLMEngine`` over pure decode steps, alternating rounds, median (the timing of
benchmarks/quantization.py).

    .venv/bin/python benchmarks/kernel_rows.py [--limits measured,4,16,64] [--batches 4,8,16,32,64]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.quantization import make_engine, measure_speed, parse_variant
from benchmarks.workload import build_prompts, corpus_words, default_corpus
from shared_engine.dual_linear import DualLinear


def dual_layers(model: nn.Module) -> list[DualLinear]:
    return [m for m in model.modules() if isinstance(m, DualLinear)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--limits", default="measured,4,16,64", help="'measured' or row counts, comma-separated")
    p.add_argument("--batches", default="4,8,16,32,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    args = p.parse_args(argv)
    chat = configured_chat_model(None, "auto")
    batches = [int(b) for b in args.batches.split(",")]
    loadavg_before = os.getloadavg()
    engines, measured = {}, {}
    for limit in args.limits.split(","):
        model = chat.build(parse_variant("auto"), chat.dtype)
        layers = dual_layers(model)
        probe = layers[0].quantized if layers else None
        if limit != "measured":
            for d in layers:  # the projections' limit; the head's kernel stops at its own
                d.quantized.set_float_rows_limit(chat.dtype, int(limit))
        elif probe is not None:
            measured = {"projections": probe.kernel_rows(torch.empty(1, probe.in_features, dtype=chat.dtype))}
        engines[f"limit {limit}"] = make_engine(model, chat.tokenizer, chat.device, chat.dtype)
        print(f"built: limit {limit}", flush=True)
    words = corpus_words(default_corpus())
    prompts = [
        chat.tokenizer.encode(pr.text)
        for pr in build_prompts(words, chat.tokenizer, max(batches), 32, seed=0, prefix_tag="kernel-rows")
    ]
    speed = measure_speed(engines, prompts, batches, args.rounds, args.max_tokens)
    print(f"{'tok/s':>16}" + "".join(f"{'batch ' + str(b):>12}" for b in batches))
    for name, per_batch in speed.items():
        print(f"{name:>16}" + "".join(f"{per_batch[b]['tok_s']:>12,.1f}" for b in batches))
    print(f"measured limit: {measured}")
    payload: dict[str, Any] = {
        **report.run_header("kernel-rows", chat.spec.name, chat.device, chat.dtype, loadavg_before),
        "batches": batches,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "measured_limit": measured,
        "speed": {name: {str(b): s for b, s in per.items()} for name, per in speed.items()},
    }
    print(f"results: {report.write_results(payload, name='kernel-rows')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
