"""oneDNN-packed linear layers: the same bits as ``nn.Linear``, and what ``build_decoder`` packs on a CPU;
without native bf16 (an AVX2-only CPU, or ``MMSERVE_CPU_BF16=0``) nothing is packed, with the same tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.packed_linear import PackedLinear, pack_linears, packing_applies
from shared_engine.quantization import Int8Linear
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")

# Detected once, at collection, before any test turns the probe off.
needs_packing = pytest.mark.skipif(
    not packing_applies(CPU, torch.bfloat16),
    reason="no native bf16 (AVX-512 BF16 and oneDNN's bf16 path) on this CPU, or MMSERVE_CPU_BF16=0: "
    "oneDNN cannot pack bf16 weights here",
)


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_packed_linear_matches_nn_linear_to_the_last_bit(bias: bool, rows: int) -> None:
    """Bit for bit on AMD's AVX-512; on a CPU with AMX oneDNN picks other kernels for the packed layout
    from 32 rows on, and a few outputs in 10,000 round the other way (one bf16 step)."""
    dtype = torch.bfloat16
    torch.manual_seed(rows)
    linear = nn.Linear(576, 960, bias=bias).to(dtype)
    packed = PackedLinear(linear.weight, linear.bias)
    x = torch.randn(rows, 576).to(dtype)
    with torch.inference_mode():
        got, want = packed(x), linear(x)
        torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-9)
        assert (got != want).float().mean().item() < 1e-3
        # leading dimensions pass through, as with nn.Linear
        assert torch.equal(packed(x.view(1, rows, 576)), got.view(1, rows, 960))
    assert torch.equal(packed.weight, linear.weight.detach())
    assert (packed.in_features, packed.out_features) == (576, 960)


@needs_packing
def test_pack_linears_gives_a_tied_head_its_own_packed_copy() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.embed_tokens = nn.Embedding(100, 16)
            self.proj = nn.Linear(16, 16)

    m = Tied().to(torch.bfloat16)
    assert pack_linears(m) == 2
    assert isinstance(m.proj, PackedLinear)
    assert isinstance(m.lm_head, PackedLinear)
    assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight.detach())
    assert isinstance(m.model.embed_tokens, nn.Embedding)  # lookups keep the plain matrix


def test_packing_is_for_bfloat16_on_the_cpu() -> None:
    assert not packing_applies(CPU, torch.float32)
    assert not packing_applies(torch.device("cuda"), torch.bfloat16)


@needs_packing
def test_build_decoder_packs_every_projection_on_the_cpu(smollm2_folder: Path) -> None:
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    model = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    assert not [n for n, m in model.named_modules() if type(m) is nn.Linear]
    packed = [n for n, m in model.named_modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * cfg.num_hidden_layers + 1  # qkv, o, gate/up, down per layer; the LM head
    hidden = torch.randn(3, cfg.hidden_size).to(torch.bfloat16)
    with torch.inference_mode():
        expected = torch.nn.functional.linear(hidden, model.model.embed_tokens.weight).float()
        assert torch.equal(model.compute_logits(hidden), expected)


@needs_packing
def test_quantized_layers_keep_their_kernels(smollm2_folder: Path) -> None:
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    model = build_decoder(
        cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16, QuantizationConfig("int8")
    )
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, Int8Linear)
    assert isinstance(layer.mlp.down_proj, Int8Linear)
    # the LM head was not asked to be quantized: it is packed
    assert isinstance(model.lm_head, PackedLinear)


def _plain_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def _greedy_tokens(model: Any, folder: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = LLMEngine(
        model, tokenizer, EngineConfig(cache=CacheConfig(block_size=4, num_blocks=64)), CPU, torch.bfloat16,
        frozenset({tokenizer.eos_token_id}),
    )  # fmt: skip
    prompts = [tokenizer(p)["input_ids"] for p in ("The capital of France is", "def fibonacci(n):")]
    return engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))


def test_without_native_bf16_nothing_is_packed(disable_native_bf16: Callable[[], None]) -> None:
    disable_native_bf16()
    assert not packing_applies(CPU, torch.bfloat16)
    # Built directly, it says why rather than failing inside oneDNN.
    with pytest.raises(ValueError, match="only bfloat16 on a CPU with native bf16"):
        PackedLinear(torch.zeros(16, 16, dtype=torch.bfloat16), None)


def test_without_native_bf16_build_decoder_keeps_plain_linears_and_runs(
    smollm2_folder: Path, disable_native_bf16: Callable[[], None]
) -> None:
    disable_native_bf16()
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    model = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    assert not [n for n, m in model.named_modules() if isinstance(m, PackedLinear)]
    assert len(_plain_linears(model)) == 4 * cfg.num_hidden_layers  # qkv, o, gate/up, down per layer
    assert getattr(model, "lm_head", None) is None  # the tied head reads the embedding matrix itself
    assert [len(t) for t in _greedy_tokens(model, smollm2_folder)] == [12, 12]


@needs_packing
def test_packed_and_plain_models_generate_the_same_tokens(
    smollm2_folder: Path, disable_native_bf16: Callable[[], None]
) -> None:
    """The fallback loses speed, never results: packing gives the same bits, so greedy decoding agrees."""
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    packed = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    assert not _plain_linears(packed)
    disable_native_bf16()
    plain = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, torch.bfloat16)
    assert _plain_linears(plain)
    assert _greedy_tokens(plain, smollm2_folder) == _greedy_tokens(packed, smollm2_folder)
