"""Whether prompts could be computed with int8 activations where the CPU has no bf16. Two ways, both
with weights int8 per output channel and an integer GEMM, against float32's matmul:

- ``tensor``: fbgemm's dynamic int8 linear (``torch.ao.nn.quantized.dynamic.Linear``), each input
  rounded to int8 with one scale for the whole tensor;
- ``token``: each row (token) rounded with a scale of its own, ``torch._int_mm`` (oneDNN), the scales
  applied to the int32 result.

Speed: GFLOP/s of the chat model's projections at a prompt's rows (``--rows``); best of ``--reps``
timings. Quality: the float32 model with every linear layer but the LM head made int8 — perplexity on
the held-out text and teacher-forced greedy agreement with float32 (as ``quality.py`` measures them;
the targets are 5% and 90%).

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


class PerTokenInt8Linear(nn.Module):
    """``linear`` with int8 weights (symmetric, per output channel) and each input row rounded to int8
    with its own scale."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.weight_scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-8)
        # [in, out], column-major: the layout oneDNN's int8 GEMM reads fastest
        self.weight_t = torch.round(weight / self.weight_scales[:, None]).to(torch.int8).t()
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scales = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-8)
        # torch._int_mm takes more than 16 rows: pad short inputs
        padded = F.pad(torch.round(rows / scales).to(torch.int8), (0, 0, 0, max(0, 17 - rows.shape[0])))
        out = torch._int_mm(padded, self.weight_t)[: rows.shape[0]].float() * scales * self.weight_scales
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def int_mm_is_exact(rows: int, k: int, n: int) -> bool:
    """Whether ``torch._int_mm`` equals an int32 matmul here: held to AVX2, oneDNN multiplies with
    vpmaddubsw, whose int16 pair sums saturate on full-range int8 inputs."""
    a = torch.randint(-127, 128, (rows, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8).t()
    return bool(torch.equal(torch._int_mm(a, b), a.int() @ b.int()))


GRANULARITIES: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "tensor": dynamic_int8,
    "token": PerTokenInt8Linear,
}


def make_int8(model: nn.Module, granularity: str) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(module, name, GRANULARITIES[granularity](child))
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
            flop = 2 * m * k * n
            row: dict[str, Any] = {"shape": f"{m}x{k}x{n}"}
            with torch.inference_mode():
                t_float = best_s(lambda: F.linear(x, linear.weight), reps)  # noqa: B023
                row["float32_gflops"] = round(flop / t_float / 1e9, 1)
                for name, make in GRANULARITIES.items():
                    q = make(linear)
                    t_int8 = best_s(lambda: q(x), reps)  # noqa: B023
                    err = float((q(x) - linear(x)).norm() / linear(x).norm())
                    row[name] = {"gflops": round(flop / t_int8 / 1e9, 1), "relative_error": round(err, 4)}
            print(
                f"{row['shape']:>16}: float32 {row['float32_gflops']:6.1f} GFLOP/s; "
                + "; ".join(
                    f"per {g} {row[g]['gflops']:6.1f} GFLOP/s, error {row[g]['relative_error']:.2%}"
                    for g in GRANULARITIES
                ),
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
    exact = int_mm_is_exact(rows[0], cfg.hidden_size, cfg.intermediate_size)
    if not exact:
        print(
            "torch._int_mm is not exact on this CPU (saturating int8 products): per-token figures are wrong"
        )

    text_ids = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    prompts = [tokenizer.encode(t) for t in AGREEMENT_PROMPTS]
    params = SamplingParams(TOKENS, temperature=0.0, ignore_eos=True)
    fp32 = chat.build(None, torch.float32)
    reference = greedy(make_engine(fp32, tokenizer, device, torch.float32, "float32"), prompts, params)
    base = perplexity(fp32, text_ids, device, torch.float32, "float32")
    quality: dict[str, dict[str, float]] = {}
    for granularity in GRANULARITIES:
        model = make_int8(chat.build(None, torch.float32), granularity)
        with torch.inference_mode():
            ppl = perplexity(model, text_ids, device, torch.float32, "float32")
            agree = teacher_forced(model, prompts, reference, device, torch.float32)
        quality[granularity] = {
            "perplexity": round(ppl, 4),
            "perplexity_vs_fp32": round(ppl / base - 1, 4),
            "agreement_teacher_forced": round(agree, 4),
        }
        print(
            f"int8 per {granularity}: perplexity {ppl:.3f} against float32's {base:.3f} "
            f"({ppl / base - 1:+.2%}); teacher-forced agreement {agree:.1%}",
            flush=True,
        )
    payload = {
        "benchmark": "dynamic_int8_prefill",
        "machine": report.machine_info(device, torch.float32),
        "model": chat.spec.name,
        "gemm": speed,
        "int_mm_exact": exact,
        "float32_perplexity": round(base, 4),
        "int8_activations": quality,
    }
    print(f"results: {report.write_results(payload, name='dynamic_int8_prefill')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
