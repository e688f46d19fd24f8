"""oneDNN-packed linear layers: the same bits as ``nn.Linear``, and what ``build_decoder`` packs on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.packed_linear import PackedLinear, pack_linears, packing_applies
from shared_engine.quantization import Int8Linear, QuantizationConfig

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(
    not packing_applies(CPU, torch.bfloat16), reason="this torch has no oneDNN for the CPU"
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_packed_linear_matches_nn_linear_bit_for_bit(bias: bool, rows: int) -> None:
    dtype = torch.bfloat16
    torch.manual_seed(rows)
    linear = nn.Linear(576, 960, bias=bias).to(dtype)
    packed = PackedLinear(linear.weight, linear.bias)
    x = torch.randn(rows, 576).to(dtype)
    with torch.inference_mode():
        assert torch.equal(packed(x), linear(x))
        # leading dimensions pass through, as with nn.Linear
        assert torch.equal(packed(x.view(1, rows, 576)), linear(x).view(1, rows, 960))
    assert torch.equal(packed.weight, linear.weight.detach())
    assert (packed.in_features, packed.out_features) == (576, 960)


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
