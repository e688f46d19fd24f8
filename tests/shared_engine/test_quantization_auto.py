"""``quantization = "auto"`` and float32 models on the CPU kernels: what auto resolves to per device, the
row counts where a float32 dual layer takes the kernel, and the packaged model as an AVX2-only CPU runs
it (float32, int4 kernels fed bf16 rows) agreeing with float32 itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from shared_engine import int_matmul
from shared_engine.dual_linear import DualLinear, float_weights_only
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization import Int4Linear, Int8Linear
from shared_engine.quantization_config import QuantizationConfig

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


def test_auto_is_int4_with_an_int8_head_and_float_weights_on_a_cpu_and_nothing_on_cuda() -> None:
    auto = QuantizationConfig("auto", group_size=64)
    on_cpu = auto.for_device(CPU)
    assert on_cpu == QuantizationConfig("int4", 64, lm_head=True, keep_float=True, head_mode="int8")
    assert on_cpu is not None and on_cpu.head == QuantizationConfig("int8", 64, lm_head=True, keep_float=True)
    assert auto.for_device(torch.device("cuda")) is None
    int8 = QuantizationConfig("int8")
    assert int8.for_device(torch.device("cuda")) is int8


@pytest.mark.parametrize(("mode", "kernel_rows"), [("int4", 64), ("int8", 32)])
def test_float32_dual_layers_take_the_kernel_up_to_its_crossover(mode: str, kernel_rows: int) -> None:
    """A float32 projection answers up to ``kernel_rows`` rows through the kernel (rows rounded to bf16:
    close to, not equal to, the float matmul) and more rows with its own float32 weight, exactly."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=False)
    quantized = Int4Linear(linear, 32) if mode == "int4" else Int8Linear(linear)
    dual = DualLinear(quantized, linear)
    with torch.inference_mode():
        for rows in (1, kernel_rows, kernel_rows + 1):
            x = torch.randn(rows, 576)
            got, exact = dual(x), linear(x)
            assert got.dtype == torch.float32
            if rows <= kernel_rows:
                assert torch.equal(got, quantized(x)) and not torch.equal(got, exact)
                assert ((got - exact).norm() / exact.norm()) < 0.1
            else:
                assert torch.equal(got, exact)
            # Leading dimensions other than rows take the same path, through the general route.
            assert torch.equal(dual(x.view(1, rows, 576)), got.view(1, rows, 1536))
            with float_weights_only():  # what the runner sets for steps computing prompt tokens
                assert torch.equal(dual(x), exact)


def test_auto_builds_dual_int4_layers_on_the_cpu(smollm2_folder: Path) -> None:
    model: Any = build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, torch.float32,
        QuantizationConfig("auto"),
    )  # fmt: skip
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, DualLinear) and isinstance(layer.quantized, Int4Linear)
    assert layer.quantized.cpu_packed and isinstance(layer.float_linear, nn.Linear)
    head = (
        model.lm_head
    )  # SmolLM2 ties its head to the embedding: an int8 copy beside the shared float weight
    assert isinstance(head, DualLinear) and isinstance(head.quantized, Int8Linear)
    assert head.float_linear.weight is model.model.embed_tokens.weight


# Runs in a fresh interpreter: ATen reads its instruction set once, at start-up.
_AVX2_SCRIPT = """
import json, torch
from transformers import AutoConfig
from benchmarks.quality import forced_argmax
from benchmarks.quantization import greedy, make_engine
from shared_engine.device import resolve_dtype
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.sampling_params import SamplingParams
from transformers import AutoTokenizer
from pathlib import Path
folder = Path({folder!r})
cpu = torch.device("cpu")
dtype = resolve_dtype("auto", cpu)
cfg, tok = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
build = lambda q: build_decoder(cfg, iter_safetensors(folder), cpu, dtype, q)
prompts = [tok.encode(p) for p in {prompts!r}]
params = SamplingParams(24, temperature=0.0, ignore_eos=True)
reference = greedy(make_engine(build(None), tok, cpu, dtype), prompts, params)
auto = build(QuantizationConfig("auto"))
same = total = 0
for p, cont in zip(prompts, reference):
    guesses = forced_argmax(auto, p + cont, cpu, dtype)[len(p) - 1 : len(p) - 1 + len(cont)]
    same += sum(g == t for g, t in zip(guesses, cont)); total += len(cont)
generated = greedy(make_engine(auto, tok, cpu, dtype), prompts, params)
print(json.dumps({{
    "capability": torch.backends.cpu.get_cpu_capability(), "dtype": str(dtype),
    "agreement": same / total, "lengths": [len(g) for g in generated],
    "kernels": sorted(p for p in torch.ops.loaded_libraries if "mmserve_cpu_kernels" in p),
    "engine_isas": [
        auto.model.layers[0].mlp.down_proj.quantized.engine_isa, auto.lm_head.quantized.engine_isa
    ],
}}))
"""


def test_the_packaged_model_as_an_avx2_cpu_runs_it_agrees_with_float32(smollm2_folder: Path) -> None:
    """No native bf16 and ATen's AVX2 kernels, as on an AMD Zen 2/3: ``auto`` gives float32 activations
    and int4 kernels, the engine's own kernels (its int4 matmul included) are built for AVX2, and
    teacher-forced greedy agreement with unquantized float32 holds (≥ 90%: the bar for a default;
    benchmarks/quality.py measures it over the full prompt set)."""
    prompts = ["The capital of France is", "def fibonacci(n):", "To make a cup of tea, first"]
    env = {
        **os.environ, "MMSERVE_CPU_BF16": "0", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
    }  # fmt: skip
    script = _AVX2_SCRIPT.format(folder=str(smollm2_folder), prompts=prompts)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["capability"] == "AVX2" and result["dtype"] == "torch.float32"
    assert len(result["kernels"]) == 1 and "mmserve_cpu_kernels_avx2" in result["kernels"][0], result
    avx2 = int_matmul.INT_MATMUL_AVX2
    assert result["engine_isas"] == [avx2, avx2], result  # the int4 projections' and the int8 head's
    assert result["agreement"] >= 0.9, result
    assert result["lengths"] == [24] * len(prompts)


def test_the_roofline_counts_the_weights_each_batch_size_reads(smollm2_folder: Path) -> None:
    """benchmarks/roofline.py's bandwidth ceiling: with auto, a one-row step reads the int4 copies and the
    int8 LM head, a 32-row step the float weights: what the unquantized model reads."""
    from benchmarks.roofline_model import projections, weight_bytes_read

    cfg = AutoConfig.from_pretrained(smollm2_folder)
    plain: Any = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    auto: Any = build_decoder(
        cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16, QuantizationConfig("auto")
    )
    assert len(projections(auto)) == len(projections(plain)) == 4 * cfg.num_hidden_layers + 1
    full = weight_bytes_read(plain, 1, torch.bfloat16)
    assert weight_bytes_read(plain, 32, torch.bfloat16) == full
    assert weight_bytes_read(auto, 32, torch.bfloat16) == full
    head = cfg.vocab_size * cfg.hidden_size * 2
    int8_head = cfg.vocab_size * (cfg.hidden_size + 2)  # a byte per weight and a bf16 scale per row
    int4_layers = weight_bytes_read(auto, 1, torch.bfloat16) - int8_head
    assert 0.2 < int4_layers / (full - head) < 0.35  # half a byte per weight, plus scales and zeros
