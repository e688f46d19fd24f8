"""The penalties' cost per decode step: ``apply_logits_processors`` over a batch whose every request asks
for a repetition penalty, or for frequency and presence penalties, with a long prompt and output behind it
(random token ids over SmolLM2's vocabulary: the cost depends on the counts, not on the model). Requests
without penalties cost nothing here.

    .venv/bin/python benchmarks/penalties.py [--rows 1,8,32] [--prompt 4000] [--output 1500] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import report
from benchmarks.roofline_microbench import best_time
from shared_engine.sampler import RequestSampler, apply_logits_processors
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")
RULES = {
    "repetition": SamplingParams(repetition_penalty=1.2),
    "frequency+presence": SamplingParams(frequency_penalty=0.5, presence_penalty=0.5),
}


@torch.inference_mode()
def measure(rule: str, rows: int, prompt_len: int, output_len: int, vocab: int, reps: int) -> dict[str, Any]:
    rng = random.Random(rows)
    prompts = [[rng.randrange(vocab) for _ in range(prompt_len)] for _ in range(rows)]
    outputs = [[rng.randrange(vocab) for _ in range(output_len)] for _ in range(rows)]
    samplers = [RequestSampler(RULES[rule], CPU, prompt) for prompt in prompts]
    logits = torch.randn(rows, vocab)
    seconds = best_time(lambda: apply_logits_processors(logits, samplers, outputs), CPU, reps, 0.2)
    return {"rule": rule, "rows": rows, "ms_per_step": round(seconds * 1e3, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--prompt", type=int, default=4000)
    p.add_argument("--output", type=int, default=1500)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"penalties, {args.prompt} prompt + {args.output} output tokens per request, {args.threads} "
          "thread(s): ms per step for the batch", flush=True)  # fmt: skip
    results = []
    for rule in RULES:
        for rows in (int(r) for r in args.rows.split(",")):
            r = measure(rule, rows, args.prompt, args.output, args.vocab, args.reps)
            results.append(r)
            print(f"  {rule:<18} rows {rows:>3}: {r['ms_per_step']:>7.3f} ms", flush=True)
    payload = {
        "benchmark": "penalties",
        "prompt_tokens": args.prompt,
        "output_tokens": args.output,
        "threads": args.threads,
        "machine": report.machine_info(CPU, torch.float32),
        "results": results,
    }
    print(f"results: {report.write_results(payload, name='penalties')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
