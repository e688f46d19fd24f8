"""Decode steps through the layer stack's single kernel call against the layers' own modules (the
``fused_decode`` switch of the Llama and Whisper decoders), in one process, interleaved: the median step
at each batch size and whether both ways give the same tokens.

The chat model decodes prompts cut from the corpus; a Whisper model (``--model whisper-tiny.en``)
decodes from random encoder output (its step cost does not depend on the audio), its cross-attention
states stored as the engine's cache stores them.

    .venv/bin/python benchmarks/layer_call.py [--model chat|whisper-tiny.en|whisper-base] [--cpu-isa avx2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoConfig, AutoTokenizer

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.offline_engine import corpus_ids, decode_prompts, greedy, kv_blocks, make_engine
from pipelines.asr.loader import prepare_whisper_folder
from services.config.models import load_model_specs
from services.config.settings import Settings
from shared_engine.device import resolve_device
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors

WHISPER_PROMPT = [50257, 50362]  # start of transcript, no timestamps


def chat_setup(batch: int, tokens: int) -> tuple[Any, LLMEngine, list[tuple[list[int], Any]]]:
    chat = configured_chat_model()
    config = chat.spec.quantization_config
    model = chat.build(config.for_device(chat.device) if config is not None else None)
    engine = make_engine(model, chat.tokenizer, chat.device, chat.dtype, kv_blocks(batch, 128, tokens))
    return model, engine, [(p, None) for p in decode_prompts(corpus_ids(chat.tokenizer), batch, 128)]


def whisper_setup(name: str, batch: int) -> tuple[Any, LLMEngine, list[tuple[list[int], Any]]]:
    settings = Settings.from_env()
    spec = next(s for s in load_model_specs(settings.models_config) if s.name == name)
    folder = prepare_whisper_folder(spec.source, spec.parts, settings.model_cache_dir)
    device, dtype = resolve_device(spec.device), torch.float32
    config = spec.quantization_config
    quantization = config.for_device(device) if config is not None else None
    model = build_decoder(
        AutoConfig.from_pretrained(folder), iter_safetensors(folder), device, dtype, quantization
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = LLMEngine(model, tokenizer, spec.engine.to_engine_config(), device, dtype, frozenset())
    torch.manual_seed(0)
    hidden = torch.randn(batch, 1500, model.arch.hidden_size, device=device) * 0.5
    states = model.cross_attention_kv(hidden, engine.runner.kv_dtype)
    return model, engine, [(list(WHISPER_PROMPT), s) for s in states]


def run(engine: LLMEngine, requests: list[tuple[list[int], Any]], tokens: int, tag: str) -> tuple[float, Any]:
    """Median decode step (ms) of the batch, and every request's tokens."""
    for i, (prompt, state) in enumerate(requests):
        engine.add_request(f"{tag}-{i}", prompt, greedy(tokens), encoder_state=state)
    outputs: dict[str, list[int]] = {}
    steps: list[float] = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        for out in engine.step():
            outputs.setdefault(out.request_id.rsplit("-", 1)[1], []).extend(out.token_ids)
        steps.append(time.perf_counter() - start)
    return statistics.median(steps[1:]) * 1e3, outputs  # the first step computes the prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="chat", help="'chat' (the configured chat model) or a Whisper model")
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--tokens", type=int, default=64, help="decode steps per run")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    rows = []
    dtype = torch.float32
    for batch in (int(b) for b in args.batches.split(",")):
        model, engine, requests = (
            chat_setup(batch, args.tokens) if args.model == "chat" else whisper_setup(args.model, batch)
        )
        assert model.decode_layers is not None, "this model's layers have no single call to compare"
        dtype = model.model.norm.weight.dtype if args.model == "chat" else torch.float32
        layer_forwards: list[int] = []
        first_layer = model.model.layers[0] if args.model == "chat" else model.decoder.layers[0]
        first_layer.register_forward_hook(lambda *_, seen=layer_forwards: seen.append(1))
        steps: dict[str, list[float]] = {"call": [], "modules": []}
        tokens: dict[str, Any] = {}
        served = False
        for r in range(args.rounds):
            for way in ("call", "modules"):
                model.fused_decode = way == "call"
                before = len(layer_forwards)
                ms, tokens[way] = run(engine, requests, args.tokens, f"{way}{r}")
                if way == "call":  # through the modules: the prompts' steps only, if the call served
                    served = len(layer_forwards) - before < args.tokens // 2
                steps[way].append(round(ms, 3))
        call, modules = statistics.median(steps["call"]), statistics.median(steps["modules"])
        same = tokens["call"] == tokens["modules"]
        note = "" if served else " (the call does not serve this batch: its rows take the float weights)"
        print(
            f"batch {batch}: one call {call:.2f} ms, modules {modules:.2f} ms a step, "
            f"same tokens: {same}{note}"
        )
        rows.append(
            {
                "batch": batch,
                "step_ms": steps,
                "call_ms": call,
                "modules_ms": modules,
                "same": same,
                "served": served,
            }
        )
    payload = {
        "benchmark": "layer_call",
        "machine": report.machine_info(torch.device("cpu"), dtype),
        "model": args.model,
        "decode_tokens": args.tokens,
        "results": rows,
    }
    print(f"results: {report.write_results(payload, name=f'layer_call-{args.model}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
