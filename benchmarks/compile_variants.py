"""The model variants the compile benchmark times, without touching the engine's code: each a copy of the
model whose ``forward`` is eager, compiled whole (``forward``, ``forward-all``; ``opaque-attention`` with
attention and the packed linears as opaque operators, one graph per decode batch size:
benchmarks/compile_opaque.py) or run with only its MLPs and norms compiled (``mlp``), and the engine
that runs one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from benchmarks.compile_opaque import attention_context
from benchmarks.offline_engine import make_engine as offline_engine
from shared_engine.attention import AttentionMetadata
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.base import DecoderArch, DecoderModel

KINDS = ("forward", "forward-all", "mlp", "opaque-attention")
Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, list[torch.Tensor]], Any]
VariantSpec = tuple[str, str, str]  # name, kind, torch.compile mode


def variant_specs(kinds: list[str], modes: list[str]) -> list[VariantSpec]:
    """Each compiled kind with each mode; the name carries the mode unless it is ``default``."""
    return [(k if m == "default" else f"{k}/{m}", k, m) for k in kinds for m in modes]


class Variant:
    """A model copy the engine runs, with ``forward`` as the variant makes it."""

    def __init__(self, name: str, kind: str, mode: str, model: DecoderModel) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.inner = model
        self.arch: DecoderArch = model.arch
        self._forward: Forward = model.forward
        self._compiled: Forward | None = None
        kwargs: dict[str, Any] = {"dynamic": True} | ({} if mode == "default" else {"mode": mode})
        if kind in ("forward", "forward-all"):
            self._compiled = torch.compile(model.forward, **kwargs)
        elif kind == "opaque-attention":
            self._compiled = torch.compile(model.forward, fullgraph=True, **(kwargs | {"dynamic": False}))
        elif kind == "mlp":
            inner: Any = model
            for layer in inner.model.layers:
                layer.mlp.compile(**kwargs)
                layer.input_layernorm.compile(**kwargs)
                layer.post_attention_layernorm.compile(**kwargs)
        elif kind != "eager":
            raise ValueError(f"unknown variant {kind!r}; known: eager, {', '.join(KINDS)}")

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor:
        # Steps with a prefill chunk stay eager unless asked otherwise: their Python list of chunks would
        # compile one graph per chunk layout.
        fn = self._forward
        if self._compiled is not None and (self.kind == "forward-all" or not meta.prefills):
            fn = self._compiled
        if self.kind == "opaque-attention" and fn is self._compiled:
            with attention_context(meta):
                hidden: torch.Tensor = fn(input_ids, positions, meta, kv_caches)
            return hidden
        out: torch.Tensor = fn(input_ids, positions, meta, kv_caches)
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.inner.load_weights(weights)


def make_engine(
    variant: Variant, tokenizer: Any, blocks: int, device: torch.device, dtype: torch.dtype
) -> LLMEngine:
    return offline_engine(variant, tokenizer, device, dtype, blocks)
