"""The chat model service as the gateway sees it: the text side (tokenizer, chat template, context
checks), shared with the remote client, and the in-process engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.llm import OPEN_ASSISTANT_TURN, ChatTokenizer, LLMPipeline, LLMPipelineConfig, TemplateOptions
from services.config.models import ModelSpec
from services.config.settings import Settings
from services.observability.timing import record_output
from shared_engine.async_engine import GenerationRequest, GroupOutputs, StepObserver
from shared_engine.errors import ContextLengthExceeded
from shared_engine.llm_engine import EngineStats


class ChatText:
    """What the gateway does with a chat model's text, wherever the model runs."""

    task = "chat"
    name: str
    text: ChatTokenizer

    @property
    def max_model_len(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        options: TemplateOptions = OPEN_ASSISTANT_TURN,
    ) -> list[int]:
        return self.text.encode_chat(messages, tools, options)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.text.encode(text, add_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The token as logprobs show it: its text, or as OpenAI writes a token that is part of a
        character, its bytes (``bytes:\\xe2\\x80``)."""
        raw = self.text.token_bytes(token_id)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def token_bytes(self, token_id: int) -> bytes:
        return self.text.token_bytes(token_id)

    def decode(self, token_ids: list[int]) -> str:
        return self.text.decode(token_ids)

    def resolve_max_tokens(self, requested: int | None, num_prompt_tokens: int, prompt_field: str) -> int:
        """Check that prompt + completion fit the context; with no request, OpenAI's default: all the
        room the context leaves."""
        max_tokens = self.max_model_len - num_prompt_tokens if requested is None else requested
        if max_tokens < 1 or num_prompt_tokens + max_tokens > self.max_model_len:
            raise ContextLengthExceeded(
                num_prompt_tokens, max(max_tokens, 1), self.max_model_len, prompt_field
            )
        return max_tokens


class LLMService(ChatText):
    def __init__(self, spec: ModelSpec, settings: Settings, on_step: StepObserver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        config = LLMPipelineConfig(
            name=spec.name,
            source=spec.source,
            dtype=spec.dtype,
            device=spec.device,
            engine=spec.engine.to_engine_config(spec.speculative),
            quantization=spec.quantization_config,
            draft_source=spec.speculative.model if spec.speculative else None,
        )
        self.pipeline = LLMPipeline(config, settings.model_cache_dir, on_step)
        self.text = self.pipeline.text

    @property
    def max_model_len(self) -> int:
        return self.pipeline.max_model_len

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    def generate(self, requests: Sequence[GenerationRequest]) -> GroupOutputs:
        return _timed(self.pipeline.generate(requests))

    def stats(self) -> EngineStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()


async def _timed(stream: GroupOutputs) -> GroupOutputs:
    try:
        async for index, out in stream:
            record_output(out)
            yield index, out
    finally:
        # Closing the engine's stream aborts the requests still running.
        await stream.aclose()
