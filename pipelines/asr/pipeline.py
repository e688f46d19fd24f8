"""Speech recognition: Whisper's encoder micro-batched, its decoder on the shared engine.

Audio is cut into 30-second windows. Each window's log-mel features go through the encoder (batched
with other requests' windows), which also projects the cross-attention keys and values once; the
decoder then runs in the engine's continuous batch with the other requests' decoders. Windows of
one request follow each other: where the next starts depends on the timestamps decoded in this one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, WhisperFeatureExtractor
from transformers import WhisperForConditionalGeneration as HFWhisper
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from pipelines.asr.audio import SAMPLE_RATE
from pipelines.asr.config import ASRPipelineConfig
from pipelines.asr.decoding import OnlyTokens, SuppressTokens, TimestampRules, WhisperVocab
from pipelines.asr.loader import prepare_whisper_folder
from pipelines.asr.segments import Segment, compression_ratio, split_window
from shared_engine.async_engine import AsyncLLMEngine, StepObserver
from shared_engine.compute import compute_lane
from shared_engine.detokenizer import Tokenizer
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.errors import InvalidRequest
from shared_engine.llm_engine import EngineStats, LLMEngine
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatcher
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.models.whisper import CrossAttentionState
from shared_engine.models.whisper_encoder import Int8RowsWhisperEncoder
from shared_engine.outputs import FinishReason, RequestOutput
from shared_engine.row_int8_linear import rows_int8_available
from shared_engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0
MAX_PROMPT_TOKENS = 223  # half the decoder's context, less the <|startofprev|> token
MAX_WINDOW_TOKENS = 224
# A window that decodes into highly repetitive text, never ends, or is improbable on average is
# decoded again hotter (the reference implementation's defaults).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_COMPRESSION_RATIO = 2.4
MIN_AVG_LOGPROB = -1.0
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str  # language name, e.g. "english"
    duration: float
    segments: list[Segment]


@dataclass(frozen=True)
class _Decoded:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None
    temperature: float = 0.0

    @property
    def avg_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


class ASRPipeline:
    task = "asr"

    def __init__(
        self,
        config: ASRPipelineConfig,
        cache_dir: Path,
        on_step: StepObserver | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        # Built on the compute lane that will run it (see LLMPipeline).
        compute_lane(resolve_device(config.device)).run(self._load, config, cache_dir, on_step, on_batch)

    def _load(
        self,
        config: ASRPipelineConfig,
        cache_dir: Path,
        on_step: StepObserver | None,
        on_batch: BatchObserver | None,
    ) -> None:
        self.config = config
        self.name = config.name
        folder = prepare_whisper_folder(config.source, config.parts, cache_dir)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self.features = WhisperFeatureExtractor.from_pretrained(folder)
        self.vocab = WhisperVocab.from_tokenizer(self.tokenizer, GenerationConfig.from_pretrained(folder))
        encoder = HFWhisper.from_pretrained(folder, dtype=self.dtype).model.encoder.to(self.device).eval()
        decoder = build_decoder(
            AutoConfig.from_pretrained(folder), iter_safetensors(folder), self.device, self.dtype,
            config.quantization,
        )  # fmt: skip
        self.encoder: nn.Module = encoder
        if config.encoder_quantization == "int8" and rows_int8_available(encoder):
            self.encoder = Int8RowsWhisperEncoder(encoder)
            cross = cast(Any, decoder).round_cross_projection_rows()
            logger.info(
                "speech model %s: encoder and %d cross-attention projections in int8", self.name, cross
            )
        elif config.encoder_quantization == "int8":
            logger.info(
                "speech model %s: encoder in %s (int8 rows need float32 on a CPU)", self.name, self.dtype
            )
        engine = LLMEngine(
            decoder, cast(Tokenizer, self.tokenizer), config.engine, self.device, self.dtype,
            frozenset({self.vocab.eot}),
        )  # fmt: skip
        # Cross-attention keys and values are stored as the engine's KV cache stores its own.
        cache_dtype = engine.runner.kv_dtype
        self._cross_kv = functools.partial(cast(Any, decoder).cross_attention_kv, dtype=cache_dtype)
        self.max_target_len = engine.max_model_len
        self.lane = compute_lane(self.device)
        self.engine = AsyncLLMEngine(engine, on_step, self.lane)
        self.batcher: MicroBatcher[np.ndarray, CrossAttentionState] = MicroBatcher(
            self.encode_batch,
            lambda _: 1,
            config.batching,
            name=f"asr-{config.name}",
            lane=self.lane,
            on_batch=on_batch,
        )
        self._rules = (SuppressTokens(self.vocab), TimestampRules(self.vocab))
        logger.info("speech model %s loaded from %s (%s, %s)", self.name, folder, self.device, self.dtype)

    @property
    def multilingual(self) -> bool:
        return self.vocab.multilingual

    @property
    def languages(self) -> list[str]:
        return sorted(self.vocab.languages) if self.multilingual else ["en"]

    # -- encoder (micro-batched) ------------------------------------------------------------------

    def log_mel(self, window: np.ndarray) -> np.ndarray:
        feats = self.features(window, sampling_rate=SAMPLE_RATE, return_tensors="np")
        return cast(np.ndarray, feats["input_features"][0])

    @torch.inference_mode()
    def encode_batch(self, mels: list[np.ndarray]) -> list[CrossAttentionState]:
        x = torch.from_numpy(np.stack(mels)).to(self.device, self.dtype)
        hidden = self.encoder(x).last_hidden_state
        return cast(list[CrossAttentionState], self._cross_kv(hidden))

    # -- requests ---------------------------------------------------------------------------------

    def _check(self, task: str, language: str | None, temperature: float) -> None:
        if not 0.0 <= temperature <= 1.0:  # NaN fails too
            raise InvalidRequest(
                f"temperature must be between 0 and 1, got {temperature}", param="temperature"
            )
        if task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r}; known: {', '.join(TASKS)}", param="task")
        if task == "translate" and not self.multilingual:
            raise InvalidRequest(f"model {self.name!r} is English-only and cannot translate", param="model")
        if language is not None and language not in self.languages:
            raise InvalidRequest(
                f"language {language!r} is not supported by model {self.name!r}; known: "
                f"{', '.join(self.languages)}",
                param="language",
            )

    async def transcribe(
        self,
        request_id: str,
        audio: np.ndarray,
        *,
        task: str = "transcribe",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
    ) -> Transcription:
        """Transcribe (or translate into English) 16 kHz mono ``audio`` of any length."""
        self._check(task, language, temperature)
        duration = len(audio) / SAMPLE_RATE
        history = self._encode_text(prompt) if prompt else []
        segments: list[Segment] = []
        seek = 0.0
        while duration - seek > 0.1:
            start = int(seek * SAMPLE_RATE)
            chunk = audio[start : start + int(WINDOW_SECONDS * SAMPLE_RATE)]
            window = len(chunk) / SAMPLE_RATE
            (state,) = await self.batcher.submit([self.log_mel(chunk)])
            if language is None:
                language = await self._detect_language(f"{request_id}-lang", state)
            prompt_ids = self._prompt(history, language, task)
            rid = f"{request_id}-{start}"
            decoded = await self._decode_window(rid, prompt_ids, state, temperature)
            result = split_window(
                decoded.tokens, decoded.logprobs, self.vocab, seek, window, self._decode_text,
                len(segments), decoded.temperature,
            )  # fmt: skip
            segments.extend(result.segments)
            history.extend(t for s in result.segments for t in s.tokens)
            seek += min(max(result.advance, 0.02), window)
        segments = [replace(s, end=min(s.end, duration)) for s in segments]
        text = "".join(s.text for s in segments).strip()
        return Transcription(text, LANGUAGES.get(language or "en", language or "en"), duration, segments)

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(" " + text.strip(), add_special_tokens=False))

    def _decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _prompt(self, history: list[int], language: str | None, task: str) -> list[int]:
        v = self.vocab
        prefix = [v.sot_prev, *history[-MAX_PROMPT_TOKENS:]] if history else []
        if not self.multilingual:
            return [*prefix, v.sot]
        lang = v.languages[language or "en"]
        return [*prefix, v.sot, lang, v.translate if task == "translate" else v.transcribe]

    async def _detect_language(self, request_id: str, state: CrossAttentionState) -> str:
        if not self.multilingual:
            return "en"
        v = self.vocab
        params = SamplingParams(
            max_tokens=1, temperature=0.0, skip_special_tokens=False,
            logits_processors=(OnlyTokens(list(v.languages.values())),),
        )  # fmt: skip
        decoded = await self._collect(self.engine.generate(request_id, [v.sot], params, state))
        by_id = {i: code for code, i in v.languages.items()}
        return by_id[decoded.tokens[0]]

    async def _decode_window(
        self, request_id: str, prompt: list[int], state: CrossAttentionState, temperature: float
    ) -> _Decoded:
        """Greedy first; hotter again while the result loops, never ends or is improbable. When every
        attempt fails a check, the most probable one on average wins."""
        temperatures = FALLBACK_TEMPERATURES if temperature == 0 else (temperature,)
        attempts: list[_Decoded] = []
        room = min(MAX_WINDOW_TOKENS, self.max_target_len - len(prompt))
        for i, t in enumerate(temperatures):
            # Seeded: the same audio gets the same transcript, fallbacks included.
            params = SamplingParams(
                max_tokens=room, temperature=t, seed=i, logprobs=0, skip_special_tokens=False,
                logits_processors=self._rules,
            )  # fmt: skip
            decoded = await self._collect(
                self.engine.generate(f"{request_id}-t{i}", prompt, params, state), t
            )
            attempts.append(decoded)
            text = self._decode_text([x for x in decoded.tokens if x < self.vocab.eot])
            looping = compression_ratio(text) > MAX_COMPRESSION_RATIO
            if (
                decoded.finish_reason is not FinishReason.LENGTH
                and not looping
                and decoded.avg_logprob >= MIN_AVG_LOGPROB
            ):
                return decoded
        return max(attempts, key=lambda d: d.avg_logprob)

    async def _collect(self, stream: AsyncIterator[RequestOutput], temperature: float = 0.0) -> _Decoded:
        tokens: list[int] = []
        logprobs: list[float] = []
        reason: FinishReason | None = None
        async for out in stream:
            tokens.extend(out.token_ids)
            logprobs.extend(lp.logprob for lp in out.logprobs)
            reason = out.finish_reason
        if tokens and tokens[-1] == self.vocab.eot:
            tokens.pop()
            logprobs = logprobs[: len(tokens)]
        return _Decoded(tokens, logprobs, reason, temperature)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def encoder_stats(self) -> BatchStats:
        return self.batcher.stats()

    @property
    def is_alive(self) -> bool:
        return self.engine.is_alive and self.batcher.is_alive

    def shutdown(self) -> None:
        self.batcher.shutdown()
        self.engine.shutdown()
