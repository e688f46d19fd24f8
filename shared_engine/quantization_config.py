"""What a model's weight-only quantization is: the mode, its group size and where it applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTIZATION_MODES = ("int8", "int4", "auto")
ACTIVATIONS = ("int8", "float")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
DEFAULT_INT4_GROUP_SIZE = 32  # measured best: groups of 64 cost SmolLM2 +49% perplexity, 32 +0.4%


@dataclass(frozen=True)
class QuantizationConfig:
    """``mode``: int8, int4 or auto; ``group_size``: input features per int4 scale/zero (ignored by int8);
    ``lm_head``: also quantize the output projection (for tied embeddings: a quantized copy);
    ``keep_float``: keep each projection's floating-point weight too, for the calls with more rows than
    the weight-only kernel serves faster (see :class:`DualLinear`); ``head_mode``: the LM head's mode if
    not ``mode``; ``activations``: ``int8`` lets the engine's integer kernels round each layer's input to
    int8 per group (faster; SmolLM2 +0.3% perplexity), ``float`` keeps it in floating point (torch's
    weight-only kernels; Whisper's decoder needs it). ``auto`` is resolved per device by
    :meth:`for_device` before a model is built."""

    mode: str
    group_size: int = DEFAULT_INT4_GROUP_SIZE
    lm_head: bool = False
    keep_float: bool = False
    head_mode: str | None = None
    activations: str = "int8"

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZATION_MODES:
            raise ValueError(f"unknown quantization {self.mode!r}; known: {', '.join(QUANTIZATION_MODES)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"quantization activations must be int8 or float, got {self.activations!r}")
        if self.head_mode not in (None, "int8", "int4"):
            raise ValueError(f"the LM head's quantization must be int8 or int4, got {self.head_mode!r}")
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"quantization group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, "
                f"got {self.group_size!r}"
            )

    def for_device(self, device: torch.device) -> QuantizationConfig | None:
        """``auto`` on a CPU: int4 projections (this group size), an int8 LM head (int4 there costs SmolLM2
        +6.6% perplexity), float weights kept; nothing elsewhere. Other modes are already concrete."""
        if self.mode != "auto":
            return self
        if device.type != "cpu":
            return None
        return QuantizationConfig(
            "int4",
            self.group_size,
            lm_head=True,
            keep_float=True,
            head_mode="int8",
            activations=self.activations,
        )

    @property
    def head(self) -> QuantizationConfig:
        if self.head_mode is None or self.head_mode == self.mode:
            return self
        return QuantizationConfig(
            self.head_mode, self.group_size, self.lm_head, self.keep_float, activations=self.activations
        )
