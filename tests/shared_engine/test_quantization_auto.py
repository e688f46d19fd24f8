"""``quantization = "auto"`` and float32 models on the CPU kernels: what auto resolves to per device, the
row counts where a float32 dual layer takes the kernel, int4 layers without a float copy where the kernel
runs as AVX2, and the packaged model as an AVX2-only CPU runs it agreeing with float32 itself."""

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

from shared_engine import cpu_kernels, int_matmul
from shared_engine.dual_linear import DualLinear, float_weights_only
from shared_engine.kernel_rows import CANDIDATE_ROWS
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization import UNLIMITED_ROWS, Int4Linear, Int8Linear
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.quantize_model import weight_bytes

# Past every row limit a build can measure (shared_engine/kernel_rows.py).
MANY_ROWS = 2 * max(CANDIDATE_ROWS)

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
    """A float32 projection answers up to ``kernel_rows`` rows through the kernel (rows rounded to int8
    or bf16: close to, not equal to, the float matmul) and more rows with its own float32 weight, exactly;
    an int4 layer whose kernel runs as AVX2 takes it at every row count."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=False)
    quantized = Int4Linear(linear, 32) if mode == "int4" else Int8Linear(linear)
    if isinstance(quantized, Int4Linear) and quantized.outruns_float:
        kernel_rows = UNLIMITED_ROWS
    assert quantized.kernel_rows(torch.empty(1, 576)) == kernel_rows
    dual = DualLinear(quantized, linear)
    with torch.inference_mode():
        for rows in (1, min(kernel_rows, 64), min(kernel_rows + 1, 200)):
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


def _auto_model(folder: Path) -> Any:
    config = AutoConfig.from_pretrained(folder)
    return build_decoder(config, iter_safetensors(folder), CPU, torch.float32, QuantizationConfig("auto"))


def test_auto_builds_dual_int4_layers_on_the_cpu(smollm2_folder: Path) -> None:
    model = _auto_model(smollm2_folder)
    layer = model.model.layers[0].mlp.down_proj
    if int_matmul.int_matmul_isa() == int_matmul.INT_MATMUL_AVX2:  # the next test's case
        assert isinstance(layer, Int4Linear) and layer.outruns_float
    else:
        assert isinstance(layer, DualLinear) and isinstance(layer.quantized, Int4Linear)
        assert layer.quantized.cpu_packed and isinstance(layer.float_linear, nn.Linear)
    head = (
        model.lm_head
    )  # SmolLM2 ties its head to the embedding: an int8 copy beside the shared float weight
    assert isinstance(head, DualLinear) and isinstance(head.quantized, Int8Linear)
    assert head.float_linear.weight is model.model.embed_tokens.weight


def test_where_the_int4_kernel_runs_as_avx2_auto_keeps_no_float_copy(
    smollm2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's AVX2 int4 kernel beats the float32 matmul at every row count: ``auto`` builds bare
    int4 layers that take it for prompts as for decode steps (a runner's ``float_weights_only`` has no
    float weight to switch to), and the model holds about a quarter of the float projections' bytes."""
    if not (cpu_kernels.load() and torch.ops.mmserve_cpu.int_matmul_supported(int_matmul.INT_MATMUL_AVX2)):
        pytest.skip("this CPU has no AVX2")
    dual_model = _auto_model(smollm2_folder)
    monkeypatch.setattr(int_matmul, "int_matmul_isa", lambda: int_matmul.INT_MATMUL_AVX2)
    model = _auto_model(smollm2_folder)
    projections = [m for n, m in model.named_modules() if n.endswith(("_proj", "qkv_proj"))]
    assert projections and all(
        isinstance(p, Int4Linear) and p.engine_isa == int_matmul.INT_MATMUL_AVX2 for p in projections
    )
    assert isinstance(model.lm_head, DualLinear)  # the int8 head's float weight is the embedding itself
    if isinstance(dual_model.model.layers[0].mlp.down_proj, DualLinear):
        assert weight_bytes(model) < 0.6 * weight_bytes(dual_model)
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(300, layer.in_features)
    with torch.inference_mode(), float_weights_only():
        want = int_matmul.int4_linear(x, layer.weight, layer.scales_and_zeros, 32, int_matmul.INT_MATMUL_AVX2)
        assert torch.equal(layer(x), want)


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
    "down_proj": type(auto.model.layers[0].mlp.down_proj).__name__,
    "engine_isas": [auto.model.layers[0].mlp.down_proj.engine_isa, auto.lm_head.quantized.engine_isa],
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
    assert result["down_proj"] == "Int4Linear", result  # no float copy beside the AVX2 kernel
    assert result["agreement"] >= 0.9, result
    assert result["lengths"] == [24] * len(prompts)


def test_the_roofline_counts_the_weights_each_batch_size_reads(smollm2_folder: Path) -> None:
    """benchmarks/roofline.py's bandwidth ceiling: with auto, a one-row step reads the int4 copies and the
    int8 LM head, a step of MANY_ROWS (past the row limits the build measures) the float weights where they
    are kept: what the unquantized model reads."""
    from benchmarks.roofline_model import projections, weight_bytes_read

    cfg = AutoConfig.from_pretrained(smollm2_folder)
    plain: Any = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    auto: Any = build_decoder(
        cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16, QuantizationConfig("auto")
    )
    assert len(projections(auto)) == len(projections(plain)) == 4 * cfg.num_hidden_layers + 1
    full = weight_bytes_read(plain, 1, torch.bfloat16)
    assert weight_bytes_read(plain, 32, torch.bfloat16) == full
    head = cfg.vocab_size * cfg.hidden_size * 2
    int8_head = cfg.vocab_size * (cfg.hidden_size + 2)  # a byte per weight and a bf16 scale per row
    int4_layers = weight_bytes_read(auto, 1, torch.bfloat16) - int8_head
    assert 0.2 < int4_layers / (full - head) < 0.35  # half a byte per weight, plus scales and zeros
    if isinstance(auto.model.layers[0].mlp.down_proj, DualLinear):
        assert weight_bytes_read(auto, MANY_ROWS, torch.bfloat16) == full
    else:  # the int4 kernel as AVX2 serves every batch size; the head's float weight takes MANY_ROWS
        int8_head_read = sum(t.numel() * t.element_size() for t in auto.lm_head.quantized.buffers())
        one_row = weight_bytes_read(auto, 1, torch.bfloat16)
        assert weight_bytes_read(auto, MANY_ROWS, torch.bfloat16) == one_row - int8_head_read + head
