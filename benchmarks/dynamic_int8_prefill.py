"""Whether prompts could be computed with int8 activations where the CPU has no bf16: fbgemm's dynamic
int8 linear (``torch.ao.nn.quantized.dynamic.Linear``: weights int8 per output channel, each input
rounded to int8 with one scale per tensor, integer GEMM) against float32's matmul.

- Speed: GFLOP/s of the chat model's projections at a prompt's rows (``--rows``), float32
  ``F.linear`` against the dynamic int8 linear; best of ``--reps`` timings.
- Quality: the float32 model with every linear layer but the LM head made dynamic int8 — perplexity
  on the held-out text and teacher-forced greedy agreement with float32 (as ``quality.py`` measures
  them; the targets are 5% and 90%).

    .venv/bin/python benchmarks/dynamic_int8_prefill.py [--cpu-isa avx2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.quality import TOKENS, teacher_forced
from benchmarks.quantization import AGREEMENT_PROMPTS, greedy, make_engine, perplexity
from benchmarks.workload import default_corpus
from shared_engine.sampling_params import SamplingParams


def dynamic_int8(linear: nn.Linear) -> nn.Module:
    """``linear`` with int8 weights (symmetric, per output channel) and dynamic int8 inputs."""
    weight = linear.weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127.5).clamp(min=1e-8).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    q = torch.ao.nn.quantized.dynamic.Linear(
        linear.in_features, linear.out_features, bias_=linear.bias is not None, dtype=torch.qint8
    )
    bias = None if linear.bias is None else linear.bias.detach().float()
    q.set_weight_bias(torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8), bias)
    return q


def make_dynamic(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(module, name, dynamic_int8(child))
    return model


def best_s(fn: Callable[[], Any], reps: int) -> float:
    fn()
    timings = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(5):
            fn()
        timings.append((time.perf_counter() - start) / 5)
    return min(timings)


def gemm_speed(hidden: int, intermediate: int, rows: list[int], reps: int) -> list[dict[str, Any]]:
    out = []
    for m in rows:
        for k, n in ((hidden, intermediate), (intermediate, hidden)):
            x, linear = torch.randn(m, k), nn.Linear(k, n, bias=False)
            linear.weight.data.mul_(0.05)
            q = dynamic_int8(linear)
            with torch.inference_mode():
                t_float = best_s(lambda: F.linear(x, linear.weight), reps)  # noqa: B023
                t_int8 = best_s(lambda: q(x), reps)  # noqa: B023
                err = float((q(x) - linear(x)).norm() / linear(x).norm())
            flop = 2 * m * k * n
            row = {
                "shape": f"{m}x{k}x{n}",
                "float32_gflops": round(flop / t_float / 1e9, 1),
                "dynamic_int8_gflops": round(flop / t_int8 / 1e9, 1),
                "relative_error": round(err, 4),
            }
            print(
                f"{row['shape']:>16}: float32 {row['float32_gflops']:6.1f} GFLOP/s, dynamic int8 "
                f"{row['dynamic_int8_gflops']:6.1f} GFLOP/s, output error {err:.2%}",
                flush=True,
            )
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--rows", default="158,2048", help="prompt rows of the GEMMs timed")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    torch.backends.quantized.engine = "fbgemm"
    chat = configured_chat_model(None, "float32")
    device, tokenizer, cfg = chat.device, chat.tokenizer, chat.hf_config
    rows = [int(r) for r in args.rows.split(",")]
    speed = gemm_speed(cfg.hidden_size, cfg.intermediate_size, rows, args.reps)

    text_ids = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    prompts = [tokenizer.encode(t) for t in AGREEMENT_PROMPTS]
    params = SamplingParams(TOKENS, temperature=0.0, ignore_eos=True)
    fp32 = chat.build(None, torch.float32)
    reference = greedy(make_engine(fp32, tokenizer, device, torch.float32, "float32"), prompts, params)
    base = perplexity(fp32, text_ids, device, torch.float32, "float32")
    dynamic = make_dynamic(chat.build(None, torch.float32))
    ppl = perplexity(dynamic, text_ids, device, torch.float32, "float32")
    agree = teacher_forced(dynamic, prompts, reference, device, torch.float32)
    print(
        f"perplexity float32 {base:.3f}, dynamic int8 {ppl:.3f} ({ppl / base - 1:+.2%}); "
        f"teacher-forced agreement {agree:.1%}"
    )
    payload = {
        "benchmark": "dynamic_int8_prefill",
        "machine": report.machine_info(device, torch.float32),
        "model": chat.spec.name,
        "gemm": speed,
        "float32_perplexity": round(base, 4),
        "dynamic_int8_perplexity": round(ppl, 4),
        "perplexity_vs_fp32": round(ppl / base - 1, 4),
        "agreement_teacher_forced": round(agree, 4),
    }
    print(f"results: {report.write_results(payload, name='dynamic_int8_prefill')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
