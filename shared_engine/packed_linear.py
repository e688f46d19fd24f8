"""Linear layers whose weights are packed once for oneDNN, for decoders running on a CPU.

``F.linear`` on a CPU hands oneDNN a row-major weight, which it reorders into its blocked layout on
every call. Reordering once at load time (what inductor's freezing pass does for compiled graphs)
gives the same bits in bfloat16 (on a CPU with AMX, a few outputs in 10,000 one bf16 step apart
from 32 rows on, where oneDNN picks another kernel) and, measured on a 2-core AMD EPYC with AVX-512
BF16 (torch 2.11, SmolLM2-135M's shapes), 1.6-2.2x faster matmuls at 1 row, 1.5-1.9x at 32 and
~1.1x at 2,048: a decode step is many small matmuls, so this is where its time goes. float32 is left
alone: there ``F.linear`` goes to MKL rather than oneDNN, packing gained ~5% and changes the rounding.

Only bfloat16 ``nn.Linear`` layers are packed (quantized ones keep their own kernels), only on a CPU
with native bf16 (:func:`~shared_engine.device.cpu_bf16_native`; oneDNN refuses to pack bf16 weights
on an AVX2-only CPU); elsewhere models are left as they are. A tied LM head gets a packed copy
of the embedding matrix, which the embedding lookup still needs in its plain layout: that costs the
matrix's size again in memory (54 MiB for SmolLM2-135M) and makes the head's matmul 1.5x faster at 32 rows.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from shared_engine.device import cpu_bf16_native

logger = logging.getLogger(__name__)

# oneDNN picks its blocking for this many rows; measured the same from 1 to 32 rows, and within 10%
# of unpacked at prefill sizes.
_ROWS_HINT = 32


def packing_applies(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and cpu_bf16_native()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """``nn.Linear`` over a oneDNN-packed weight (inference only)."""

    packed: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if not packing_applies(weight.device, weight.dtype):
            raise ValueError(
                f"cannot pack a {weight.dtype} weight on {weight.device} for oneDNN: only bfloat16 on a CPU "
                "with native bf16 (see shared_engine.device.cpu_bf16_native)"
            )
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The weight in the plain ``[out, in]`` layout (a copy: for inspection, not for the hot path)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


@torch.no_grad()
def pack_linears(model: nn.Module) -> int:
    """Replace the model's floating-point ``nn.Linear`` layers in place (and give a tied LM head a packed
    copy of the embedding matrix); returns how many were packed. Call on the device and dtype the model
    runs in, when :func:`packing_applies` to them."""
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(linear.weight, linear.bias))
    packed = len(targets)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if getattr(model, "lm_head", None) is None and isinstance(embed, nn.Embedding):
        model.lm_head = PackedLinear(embed.weight, None)
        packed += 1
    logger.info("packed %d linear layers for oneDNN", packed)
    return packed
