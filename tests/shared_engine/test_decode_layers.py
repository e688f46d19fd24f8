"""The decoder's layer stack in one kernel call at decode-only steps (shared_engine/decode_layers.py,
csrc/decode_layers.cpp): the packaged model gives the same hidden states through it as through its
modules, and the steps and models it cannot serve go through the modules."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig

from shared_engine import int_matmul
from shared_engine.decode_layers import DecodeLayers
from shared_engine.dual_linear import DualLinear, float_weights_only
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.llama import LlamaForCausalLM
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization import UNLIMITED_ROWS
from shared_engine.quantization_config import QuantizationConfig
from tests.helpers.threads import torch_threads

CPU = torch.device("cpu")
BLOCK = 16
AUTO = QuantizationConfig("auto")
PROMPTS = [[1, 504, 3458, 282, 4649, 314], [2, 1068, 28, 7, 1], [1, 9, 44, 120, 5000, 17, 3]]
# More decodes than the kernel's threads each round to int8 alone (kRowsQuantizedByEach, 8): they share
# the rounding, each some rows, and meet at a barrier; as AVX2, 64 rows also take the int4 kernel's
# many-rows form. float32's preset row limit is 64.
MANY_PROMPTS = [[1, 300 + 7 * i, 28, 4649 - i, 5 + i] for i in range(64)]

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


def decode_run(
    model: Any, dtype: torch.dtype, fused: bool, steps: int = 4, prompts: list[list[int]] = PROMPTS
) -> tuple[list[torch.Tensor], int]:
    """Prefill the prompts, then ``steps`` greedy decode steps of all of them: each step's hidden states,
    and how many of the forwards went through the layers' modules."""
    model.fused_decode = fused
    calls = LayerCalls(model)
    per_prompt = max(2, -(-(max(map(len, prompts)) + steps) // BLOCK))
    runner = ModelRunner(
        model, num_blocks=per_prompt * len(prompts) + 6, block_size=BLOCK, device=CPU, dtype=dtype
    )
    blocks = [list(range(per_prompt * i, per_prompt * (i + 1))) for i in range(len(prompts))]
    hidden, offsets = runner.forward([Segment(b, 0, p) for b, p in zip(blocks, prompts, strict=True)])
    last = [o + len(p) - 1 for o, p in zip(offsets, prompts, strict=True)]
    tokens = model.compute_logits(hidden[last]).argmax(-1).tolist()
    lengths = [len(p) for p in prompts]
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


def test_many_decodes_through_the_kernel_equal_the_modules(smollm2_folder: Path) -> None:
    model = build(smollm2_folder, torch.float32)
    assert model.decode_layers is not None
    assert model.decode_layers.row_limit(torch.empty(0)) >= len(MANY_PROMPTS)
    with torch.inference_mode():
        fused, fused_calls = decode_run(model, torch.float32, fused=True, steps=2, prompts=MANY_PROMPTS)
        modules, _ = decode_run(model, torch.float32, fused=False, steps=2, prompts=MANY_PROMPTS)
    assert fused_calls == 1
    for got, want in zip(fused, modules, strict=True):
        assert torch.equal(got, want)


def test_one_long_request_split_among_the_threads_equals_the_modules(smollm2_folder: Path) -> None:
    """One request of 200 positions has 3 (request, kv head) pairs for the threads: on two or more, the
    stack's attention splits each context in parts merged after, as the modules' attention kernel does."""
    model = build(smollm2_folder, torch.bfloat16)
    long_prompt = [[1 + (37 * i) % 4000 for i in range(200)]]
    with torch_threads(max(2, torch.get_num_threads())), torch.inference_mode():
        fused, fused_calls = decode_run(model, torch.bfloat16, fused=True, prompts=long_prompt)
        modules, _ = decode_run(model, torch.bfloat16, fused=False, prompts=long_prompt)
    assert fused_calls == 1
    for got, want in zip(fused, modules, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_qkv_bias_is_added_by_the_threads_that_compute_its_heads(
    smollm2_folder: Path, dtype: torch.dtype
) -> None:
    """A bias on the qkv projection (as Qwen2's): each of the stack's threads adds it to the heads it
    computed, before rotating them and writing them to the cache, where the modules add it to all; one
    request with its attention split among the threads, then three, and in float32 (whose row limit
    takes them) 64, the rows' rounding shared."""
    model = build(smollm2_folder, dtype)
    generator = torch.Generator().manual_seed(0)
    for layer in model.model.layers:
        qkv = layer.self_attn.qkv_proj
        quantized = qkv.quantized if isinstance(qkv, DualLinear) else qkv
        quantized.bias = torch.randn(quantized.out_features, generator=generator).to(dtype)
    inner = model.model
    model.decode_layers = DecodeLayers.plan(inner.embed_tokens, list(inner.layers), inner.norm)
    assert model.decode_layers is not None
    long_prompt = [[1 + (37 * i) % 4000 for i in range(200)]]
    with torch_threads(max(2, torch.get_num_threads())), torch.inference_mode():
        many = [MANY_PROMPTS] if dtype == torch.float32 else []
        for prompts in (long_prompt, PROMPTS, *many):
            fused, fused_calls = decode_run(model, dtype, fused=True, steps=2, prompts=prompts)
            modules, _ = decode_run(model, dtype, fused=False, steps=2, prompts=prompts)
            assert fused_calls == 1
            for got, want in zip(fused, modules, strict=True):
                assert torch.equal(got, want)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("threads", [1, 17])
def test_one_thread_and_more_threads_than_heads_equal_the_modules(smollm2_folder: Path, threads: int) -> None:
    """One thread computes every share itself; 17 threads are more than the qkv projection's 15 heads and
    the o projection's even-out leaves some with no blocks: each share still computed once."""
    model = build(smollm2_folder, torch.bfloat16)
    with torch_threads(threads), torch.inference_mode():
        fused, fused_calls = decode_run(model, torch.bfloat16, fused=True, steps=2)
        modules, _ = decode_run(model, torch.bfloat16, fused=False, steps=2)
    assert fused_calls == 1
    for got, want in zip(fused, modules, strict=True):
        assert torch.equal(got, want)


@pytest.mark.timeout(300)
def test_a_team_larger_than_the_machine_equals_the_modules(smollm2_folder: Path) -> None:
    """Three threads a core: the stack's threads wait at every barrier for threads the OS has descheduled
    (they yield their core after spinning a while) and still compute every step as the modules do."""
    model = build(smollm2_folder, torch.bfloat16)
    with torch_threads(3 * (os.cpu_count() or 1)), torch.inference_mode():
        fused, fused_calls = decode_run(model, torch.bfloat16, fused=True, steps=2)
        modules, _ = decode_run(model, torch.bfloat16, fused=False, steps=2)
    assert fused_calls == 1
    for got, want in zip(fused, modules, strict=True):
        assert torch.equal(got, want)


def test_an_error_inside_the_stack_is_raised_and_the_next_call_works(smollm2_folder: Path) -> None:
    """A kernel's check that fails while the stack's threads run (the rotary tables in bfloat16, which
    only the rotary kernel checks) raises here, on the caller's thread; nothing hangs, and the next step
    is served. Token ids, positions and slots the step cannot have are refused, not read or written."""
    model = build(smollm2_folder, torch.bfloat16)
    plan = model.decode_layers
    assert plan is not None
    runner = ModelRunner(model, num_blocks=8, block_size=BLOCK, device=CPU, dtype=torch.bfloat16)
    rotary = model.model.rotary_emb
    tables = (rotary.cos, rotary.signed_sin)
    with torch.inference_mode():
        prompts = [Segment([2 * i, 2 * i + 1], 0, p) for i, p in enumerate(PROMPTS)]
        runner.forward(prompts)
        decodes = [Segment(s.block_ids, len(s.token_ids), [7]) for s in prompts]
        ids, positions, meta, _ = runner._prepare(decodes)
        caches = runner.kv_caches
        assert plan.serves(ids, meta, caches)
        with pytest.raises(RuntimeError, match="cos and signed_sin must be contiguous float32"):
            plan(ids, positions, (rotary.cos.bfloat16(), rotary.signed_sin.bfloat16()), meta, caches)
        with pytest.raises(RuntimeError, match="one entry per token"):
            plan(ids, positions[:-1], tables, meta, caches)
        with pytest.raises(RuntimeError, match="one KV cache per layer"):
            plan(ids, positions, tables, meta, caches[:-1])
        smaller = caches[-1][:, :, :-1].contiguous()  # a block fewer than the others
        with pytest.raises(RuntimeError, match="every layer's KV cache must be contiguous, of the first"):
            plan(ids, positions, tables, meta, [*caches[:-1], smaller])
        before = [cache.clone() for cache in caches]
        vocab = model.model.embed_tokens.num_embeddings
        for bad in (vocab, -1):
            with pytest.raises(RuntimeError, match=f"token id {bad} is outside the vocabulary"):
                plan(torch.tensor([7, bad, 7]), positions, tables, meta, caches)
        far = positions.clone()
        far[1] = rotary.cos.shape[0]
        with pytest.raises(RuntimeError, match=f"position {far[1]} is outside the rotary tables"):
            plan(ids, far, tables, meta, caches)
        slots = meta.slot_mapping.clone()
        slots[2] = caches[0].shape[2] * BLOCK
        with pytest.raises(RuntimeError, match=f"slot {slots[2]} is outside the KV cache"):
            plan(ids, positions, tables, replace(meta, slot_mapping=slots), caches)
        assert all(torch.equal(cache, kept) for cache, kept in zip(caches, before, strict=True))
        got = plan(ids, positions, tables, meta, caches)
        model.fused_decode = False
        want = model.forward(ids, positions, meta, caches)
    assert torch.equal(got, want)


def test_the_stack_checks_its_weights_once_when_made(smollm2_folder: Path) -> None:
    """The kernel's LayerStack refuses weights it could not multiply when the plan is made, not at a
    step: a group size of 0 (which sizing its workspace divides by), a layer whose projections differ
    from the first layer's, a missing weight, an embedding of another width."""
    model = build(smollm2_folder, torch.float32)
    plan = model.decode_layers
    assert plan is not None
    attention = model.model.layers[0].self_attn
    shape = (attention.num_heads, attention.num_kv_heads, attention.head_dim, attention.scale, 1e-5)
    o_proj = attention.o_proj
    int4 = o_proj.quantized if isinstance(o_proj, DualLinear) else o_proj
    group, isa = int4.group_size, int4.engine_isa

    def make(weights: list[torch.Tensor], group: int, embedding: torch.Tensor = plan.embedding) -> None:
        torch.classes.mmserve_cpu.LayerStack(embedding, plan.first_norm, weights, *shape, group, isa)

    make(plan.weights, group)
    with pytest.raises(RuntimeError, match="group size must be positive"):
        make(plan.weights, 0)
    swapped = list(plan.weights)
    swapped[11 + 3], swapped[11 + 4] = plan.weights[11 + 5], plan.weights[11 + 6]  # layer 1: o as gate/up
    with pytest.raises(RuntimeError, match="the first layer's shapes"):
        make(swapped, group)
    with pytest.raises(RuntimeError, match="11 weights per layer"):
        make(plan.weights[:-1], group)
    with pytest.raises(RuntimeError, match="token embedding must be contiguous"):
        make(plan.weights, group, plan.embedding[:, :-1])


def test_weights_the_kernel_refuses_leave_the_steps_to_the_modules(
    smollm2_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A norm of another dtype than the rest: no plan (logged), rather than every forward failing."""
    model = build(smollm2_folder, torch.float32)
    norm = model.model.layers[1].post_attention_layernorm
    norm.weight.data = norm.weight.data.half()
    with caplog.at_level("WARNING", logger="shared_engine.decode_layers"):
        assert DecodeLayers.plan(model.model.embed_tokens, list(model.model.layers), model.model.norm) is None
    assert "biases and norms must be contiguous, of one dtype" in caplog.text


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


def test_norms_of_another_epsilon_are_left_to_the_modules(smollm2_folder: Path) -> None:
    """The kernel takes one epsilon for every norm: a model whose norms differ is not planned."""
    model = build(smollm2_folder, torch.float32)
    layers, final_norm = list(model.model.layers), model.model.norm
    assert DecodeLayers.plan(model.model.embed_tokens, layers, final_norm) is not None
    layers[3].post_attention_layernorm.eps = 10 * final_norm.eps
    assert DecodeLayers.plan(model.model.embed_tokens, layers, final_norm) is None
