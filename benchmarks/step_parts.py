"""Where a decode step's wall time goes outside the kernels: the chat model's offline engine at ``--batch``
rows, each step split into the layer stack's call, the LM head (with its logits made float32), and the
rest, the engine's Python (scheduling, the batch's tensors, sampling, detokenizing, the outputs).

Also how much slower the same Python is right after a step than when repeated at once: a step streams
~100 MB of weights through the caches, and the interpreter's, the tokenizer's and PyTorch's own data
and code come back from memory after it. ``--probe`` times a tokenizer decode of a few tokens and a
small ``torch.tensor`` both ways.

    .venv/bin/python benchmarks/step_parts.py [--batch 1] [--rounds 10] [--steps 64] [--cpu-isa avx2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.offline_engine import corpus_ids, decode_prompts, greedy, kv_blocks, make_engine

PROMPT_TOKENS = 128
OUTPUT_TOKENS = 256
PROBE_TOKENS = 6


class Timed:
    """``fn`` with the seconds its calls took added up."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def micros(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--batch", type=at_least_one, default=1)
    p.add_argument("--rounds", type=at_least_one, default=10)
    p.add_argument("--steps", type=at_least_one, default=64, help="decode steps per round")
    p.add_argument("--probe", type=at_least_one, default=200, help="steps after which the probe runs")
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)

    chat = configured_chat_model()
    config = chat.spec.quantization_config
    model = chat.build(config.for_device(chat.device) if config is not None else None)
    stack = model.decode_layers
    if stack is None:
        raise SystemExit("the chat model's steps do not go through the layer stack's call here")
    prompts = decode_prompts(corpus_ids(chat.tokenizer), args.batch, PROMPT_TOKENS)
    engine = make_engine(
        model, chat.tokenizer, chat.device, chat.dtype, kv_blocks(args.batch, PROMPT_TOKENS, OUTPUT_TOKENS)
    )
    engine.generate(prompts, greedy(4))
    stack_call, head_call = Timed(stack._op), Timed(model.compute_logits)
    stack._op, model.compute_logits = stack_call, head_call
    added = 0

    def step() -> bool:
        """One pure decode step (True), or the prompts of a new batch (False, not to be timed)."""
        nonlocal added
        if not engine.has_unfinished_requests():
            for prompt in prompts:
                engine.add_request(f"r{added}", prompt, greedy(OUTPUT_TOKENS))
                added += 1
            engine.step()  # the prompts' steps are not timed
            while any(r.num_output_tokens == 0 for r in engine.scheduler.running):
                engine.step()
            return False
        engine.step()
        return True

    rounds: list[dict[str, float]] = []
    means: list[dict[str, float]] = []  # each step's parts add up to it exactly: so do their means
    for r in range(args.rounds):
        parts: dict[str, list[float]] = {"step": [], "stack": [], "head": [], "rest": []}
        while len(parts["step"]) < args.steps:
            stack_call.seconds = head_call.seconds = 0.0
            start = time.perf_counter()
            if not step():
                continue
            total = time.perf_counter() - start
            stack_s, head_s = stack_call.seconds, head_call.seconds
            for name, seconds in (("step", total), ("stack", stack_s), ("head", head_s)):
                parts[name].append(seconds * 1e3)
            parts["rest"].append((total - stack_s - head_s) * 1e3)
        rounds.append({name: round(statistics.median(v), 4) for name, v in parts.items()})
        means.append({name: statistics.fmean(v) for name, v in parts.items()})
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in rounds[-1].items()))

    ids = corpus_ids(chat.tokenizer)[:PROBE_TOKENS]
    small = list(range(40))
    probes: dict[str, Callable[[], object]] = {
        "tokenizer_decode": lambda: chat.tokenizer.decode(ids, skip_special_tokens=True),
        "torch_tensor": lambda: torch.tensor(small, dtype=torch.long),
    }
    probe: dict[str, dict[str, float]] = {}
    for name, fn in probes.items():
        cold: list[float] = []
        warm: list[float] = []
        while len(cold) < args.probe:
            if step():
                cold.append(micros(fn))
                warm.append(micros(fn))
        probe[name] = {"after_step_us": statistics.median(cold), "repeated_us": statistics.median(warm)}
        print(f"{name}: {probe[name]['after_step_us']:.1f} us right after a step, "
              f"{probe[name]['repeated_us']:.1f} us repeated")  # fmt: skip

    summary = {name: round(statistics.median(r[name] for r in rounds), 4) for name in rounds[0]}
    print("median of rounds: " + ", ".join(f"{k} {v:.3f} ms" for k, v in summary.items()))
    payload = {
        "benchmark": "step_parts",
        "machine": report.machine_info(chat.device, chat.dtype),
        "batch": args.batch,
        "steps_per_round": args.steps,
        "rounds": rounds,
        "round_means_ms": means,
        "median_ms": summary,
        "probe": probe,
    }
    print(f"results: {report.write_results(payload, args.results_dir, name='step_parts')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
