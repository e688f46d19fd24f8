"""The decoder's layer stack in one kernel call at decode-only steps (shared_engine/decode_layers.py,
csrc/decode_layers.cpp): the packaged model gives the same hidden states through it as through its
modules, and the steps and models it cannot serve go through the modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig

from shared_engine import int_matmul
from shared_engine.dual_linear import float_weights_only
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.llama import LlamaForCausalLM
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization import UNLIMITED_ROWS
from shared_engine.quantization_config import QuantizationConfig

CPU = torch.device("cpu")
BLOCK = 16
AUTO = QuantizationConfig("auto")
PROMPTS = [[1, 504, 3458, 282, 4649, 314], [2, 1068, 28, 7, 1], [1, 9, 44, 120, 5000, 17, 3]]

pytestmark = pytest.mark.skipif(
    int_matmul.int_matmul_isa() is None, reason="the engine's int4 kernel needs AVX2 and the CPU kernels"
)


def build(folder: Path, dtype: torch.dtype, quantization: QuantizationConfig | None = AUTO) -> Any:
    config = AutoConfig.from_pretrained(folder)
    return build_decoder(config, iter_safetensors(folder), CPU, dtype, quantization)


class LayerCalls:
    """Counts forwards through the first layer's module: none where the stack's kernel served a step."""

    def __init__(self, model: Any) -> None:
        self.count = 0
        model.model.layers[0].register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.count += 1


def decode_run(model: Any, dtype: torch.dtype, fused: bool, steps: int = 4) -> tuple[list[torch.Tensor], int]:
    """Prefill three prompts, then ``steps`` greedy decode steps of all three: each step's hidden states,
    and how many of the forwards went through the layers' modules."""
    model.fused_decode = fused
    calls = LayerCalls(model)
    runner = ModelRunner(model, num_blocks=12, block_size=BLOCK, device=CPU, dtype=dtype)
    blocks = [[0, 1], [2, 3], [4, 5]]
    hidden, offsets = runner.forward([Segment(b, 0, p) for b, p in zip(blocks, PROMPTS, strict=True)])
    last = [o + len(p) - 1 for o, p in zip(offsets, PROMPTS, strict=True)]
    tokens = model.compute_logits(hidden[last]).argmax(-1).tolist()
    lengths = [len(p) for p in PROMPTS]
    states = []
    for _ in range(steps):
        segments = [Segment(b, n, [t]) for b, n, t in zip(blocks, lengths, tokens, strict=True)]
        hidden, _ = runner.forward(segments)
        states.append(hidden.clone())
        logits = model.compute_logits(hidden)
        tokens, lengths = logits.argmax(-1).tolist(), [n + 1 for n in lengths]
    return states, calls.count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_steps_through_the_kernel_equal_the_modules(smollm2_folder: Path, dtype: torch.dtype) -> None:
    model = build(smollm2_folder, dtype)
    assert model.decode_layers is not None
    rows_limit = model.decode_layers.row_limit(torch.empty(0, dtype=dtype))
    with torch.inference_mode():
        fused, fused_calls = decode_run(model, dtype, fused=True)
        modules, module_calls = decode_run(model, dtype, fused=False)
    assert module_calls == 5  # the prefill and four decode steps
    # Three decodes are within the kernel's rows for both dtypes (presets float32: 64, packed bfloat16: 4).
    assert rows_limit >= 3 and fused_calls == 1  # only the prefill went through the modules
    for got, want in zip(fused, modules, strict=True):
        assert torch.equal(got, want)


def test_steps_it_cannot_serve_go_through_the_modules(smollm2_folder: Path) -> None:
    """A step with a prompt in it, more decodes than the int4 kernel serves (where a float partner takes
    over: not where the kernel runs as AVX2), or float weights forced."""
    model = build(smollm2_folder, torch.bfloat16)
    plan = model.decode_layers
    assert plan is not None
    limit = plan.row_limit(torch.empty(0, dtype=torch.bfloat16))
    bounded = limit < UNLIMITED_ROWS
    requests = limit + 1 if bounded else 4
    calls = LayerCalls(model)
    blocks = 2 * requests + 2
    runner = ModelRunner(model, num_blocks=blocks, block_size=BLOCK, device=CPU, dtype=torch.bfloat16)
    with torch.inference_mode():
        prompts = [Segment([2 * i, 2 * i + 1], 0, [1, 2, 3 + i]) for i in range(requests)]
        runner.forward(prompts)
        decodes = [Segment(s.block_ids, 3, [7]) for s in prompts]
        runner.forward([decodes[0], Segment([2 * requests], 0, [4, 5])])  # a decode beside a prompt
        runner.forward(decodes)  # one more decode than the kernel's rows, where it has a limit
        modules = 3 if bounded else 2
        assert calls.count == modules
        # The runner forces float weights only for prompts; a caller of the model may for decodes too.
        ids, positions, meta, _ = runner._prepare([Segment(decodes[0].block_ids, 4, [8])])
        with float_weights_only():
            model.forward(ids, positions, meta, runner.kv_caches)
        assert calls.count == modules + 1
        runner.forward([Segment(decodes[0].block_ids, 5, [9])])
        assert calls.count == modules + 1  # the stack's kernel


def test_only_int4_layers_on_the_engine_kernel_are_planned(smollm2_folder: Path) -> None:
    assert build(smollm2_folder, torch.float32, None).decode_layers is None
    assert build(smollm2_folder, torch.float32, QuantizationConfig("int8")).decode_layers is None
    int4_alone = build(smollm2_folder, torch.float32, QuantizationConfig("int4"))
    plan = int4_alone.decode_layers
    assert plan is not None and plan.row_limit(torch.empty(0)) > 1000  # no float partner to hand over to
    assert isinstance(int4_alone, LlamaForCausalLM) and len(plan.weights) == 11 * int4_alone.arch.num_layers
