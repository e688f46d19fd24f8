"""Whether the compile benchmark's compiled variants generate what eager does: their greedy tokens against
eager's, all prompts at once, in a dtype of its own (float32 by default, where they should be identical)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.compile_dynamo import RecompileLog, dynamo_delta, dynamo_snapshot
from benchmarks.compile_variants import Variant, VariantSpec, make_engine
from benchmarks.offline_engine import greedy, kv_blocks
from shared_engine.models.base import DecoderModel

MIN_PROMPT_LEN = 8
# Where the check's prompts start in the corpus: elsewhere than the timed prompts (benchmarks.offline_engine).
CHECK_OFFSET, CHECK_STRIDE = 1000, 131


def agreement(ours: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    """How many sequences equal the reference, and the mean share of each that matches before the first
    difference."""
    prefixes = []
    for a, b in zip(ours, ref, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prefixes.append(n / max(len(b), 1))
    return {
        "identical": sum(a == b for a, b in zip(ours, ref, strict=True)),
        "sequences": len(ref),
        "mean_matching_prefix": round(statistics.mean(prefixes), 4),
    }


def check_prompts(corpus: list[int], count: int, longest: int) -> list[list[int]]:
    """``count`` prompts of different lengths, from ``longest`` tokens down (``MIN_PROMPT_LEN`` at least);
    ``corpus`` must be longer than ``longest``."""
    span = len(corpus) - longest
    lens = [max(MIN_PROMPT_LEN, longest * (count - i) // count) for i in range(count)]
    return [corpus[(CHECK_OFFSET + i * CHECK_STRIDE) % span :][:length] for i, length in enumerate(lens)]


def correctness_check(
    model: DecoderModel,
    build: Callable[[], DecoderModel],
    specs: list[VariantSpec],
    tokenizer: Any,
    prompts: list[list[int]],
    tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    log: RecompileLog,
) -> dict[str, Any]:
    """Greedy outputs of each compiled variant (on a model of its own from ``build``) against eager's (on
    ``model``), all prompts at once, in ``dtype``."""
    blocks = kv_blocks(len(prompts), max(map(len, prompts)), tokens)
    params = greedy(tokens)
    eager = make_engine(Variant("eager", "eager", "default", model), tokenizer, blocks, device, dtype)
    ref = eager.generate(prompts, params)
    out: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_lens": [len(p) for p in prompts],
        "tokens": tokens,
        "variants": {},
    }
    for name, kind, mode in specs:
        log.tag = f"{name} (check)"
        before = dynamo_snapshot()
        start = time.perf_counter()
        try:
            v = Variant(name, kind, mode, build())
            got = make_engine(v, tokenizer, blocks, device, dtype).generate(prompts, params)
        except Exception as e:  # report the failure, go on with the others
            out["variants"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out["variants"][name] = {
            **agreement(got, ref),
            "wall_s": round(time.perf_counter() - start, 2),
            **dynamo_delta(before, dynamo_snapshot()),
        }
    return out
