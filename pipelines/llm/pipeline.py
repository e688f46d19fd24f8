"""The chat/completions pipeline: tokenizer and chat template around the shared decoder engine."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import xgrammar as xgr
from transformers import AutoConfig, GenerationConfig

from pipelines.llm.loader import prepare_model_folder
from pipelines.llm.tokenizer import OPEN_ASSISTANT_TURN, ChatTokenizer, TemplateOptions
from shared_engine.async_engine import AsyncLLMEngine, GenerationRequest, GroupOutputs, StepObserver
from shared_engine.compute import compute_lane
from shared_engine.config import EngineConfig
from shared_engine.detokenizer import Tokenizer
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.errors import InvalidRequest
from shared_engine.llm_engine import EngineStats, LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.structured_output import StructuredOutputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMPipelineConfig:
    name: str
    source: str
    dtype: str = "auto"
    device: str = "auto"
    engine: EngineConfig = field(default_factory=EngineConfig)
    quantization: QuantizationConfig | None = None  # None: the weights as loaded
    # Speculative decoding with a draft model (engine.speculative.method "draft_model"): its source.
    draft_source: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if not self.source:
            raise ValueError(f"model {self.name!r}: source must not be empty")
        spec = self.engine.speculative
        if (spec is not None and spec.method == "draft_model") != (self.draft_source is not None):
            raise ValueError(f"model {self.name!r}: a draft model source goes with method 'draft_model' only")


def _eos_ids(folder: Path, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        gen = GenerationConfig.from_pretrained(folder)
    except OSError:
        gen = None
    if gen is not None and gen.eos_token_id is not None:
        eos = gen.eos_token_id
        ids.update([eos] if isinstance(eos, int) else eos)
    return frozenset(ids)


def structured_outputs(
    tokenizer: Any, vocab_size: int, eos_ids: frozenset[int], device: torch.device
) -> StructuredOutputs:
    """The grammar engine for this tokenizer: its vocabulary decoded once (the model's vocabulary size,
    which may pad the tokenizer's), with the model's stop tokens ending every grammar."""
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_ids)
    )
    return StructuredOutputs(info, pin_memory=device.type == "cuda")


def check_prompts(requests: Sequence[GenerationRequest]) -> None:
    if not requests:
        raise InvalidRequest("no prompt to generate from", param="prompt")
    if any(not r.prompt_token_ids for r in requests):
        raise InvalidRequest("the prompt is empty", param="prompt")


class LLMPipeline:
    """Load weights, turn messages or text into token ids, hand them to the engine."""

    task = "chat"

    def __init__(
        self, config: LLMPipelineConfig, cache_dir: Path, on_step: StepObserver | None = None
    ) -> None:
        # Built on the compute lane that will step it: a second thread running parallel CPU code would
        # keep an OpenMP team of its own and slow every step (shared_engine/compute.py).
        compute_lane(resolve_device(config.device)).run(self._load, config, cache_dir, on_step)

    def _load(self, config: LLMPipelineConfig, cache_dir: Path, on_step: StepObserver | None) -> None:
        self.config = config
        self.name = config.name
        folder = prepare_model_folder(config.source, cache_dir)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        hf_config = AutoConfig.from_pretrained(folder)
        self.text = ChatTokenizer(folder, config.name)
        self.tokenizer = self.text.tokenizer
        model = build_decoder(
            hf_config, iter_safetensors(folder), self.device, self.dtype, config.quantization
        )
        draft = None
        if config.draft_source is not None:
            draft_folder = prepare_model_folder(config.draft_source, cache_dir)
            draft_config = AutoConfig.from_pretrained(draft_folder)
            draft = build_decoder(
                draft_config, iter_safetensors(draft_folder), self.device, self.dtype, config.quantization
            )
            logger.info("model %s drafts with %s", self.name, draft_folder)
        eos_ids = _eos_ids(folder, self.tokenizer)
        self.structured = structured_outputs(self.tokenizer, model.arch.vocab_size, eos_ids, self.device)
        engine = LLMEngine(
            model,
            cast(Tokenizer, self.tokenizer),
            config.engine,
            self.device,
            self.dtype,
            eos_ids,
            draft_model=draft,
            structured=self.structured,
        )
        self.max_model_len = engine.max_model_len
        self.engine = AsyncLLMEngine(engine, on_step, compute_lane(self.device))
        quantized = f", {config.quantization.mode} weights" if config.quantization else ""
        logger.info(
            "model %s loaded from %s (%s, %s%s)", self.name, folder, self.device, self.dtype, quantized
        )

    @property
    def has_chat_template(self) -> bool:
        return self.text.has_chat_template

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        options: TemplateOptions = OPEN_ASSISTANT_TURN,
    ) -> list[int]:
        return self.text.encode_chat(messages, tools, options)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.text.encode(text, add_special_tokens)

    def decode_token(self, token_id: int) -> str:
        return self.text.decode_token(token_id)

    def generate(self, requests: Sequence[GenerationRequest]) -> GroupOutputs:
        """The requests' outputs, tagged with each one's position; the engine schedules them together
        (see AsyncLLMEngine.generate_group)."""
        check_prompts(requests)
        return self.engine.generate_group(requests)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def is_alive(self) -> bool:
        return self.engine.is_alive

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.structured.shutdown()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
