"""Speech recognition: Whisper's encoder micro-batched, its decoder on the shared engine.

Audio is cut into 30-second windows. Each window's log-mel features go through the encoder (batched
with other requests' windows), which also projects the cross-attention keys and values once; the
decoder then runs in the engine's continuous batch with the other requests' decoders. Windows of
one request follow each other: where the next starts depends on the timestamps decoded in this one.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, WhisperFeatureExtractor
from transformers import WhisperForConditionalGeneration as HFWhisper
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from pipelines.asr.alignment import Word
from pipelines.asr.audio import SAMPLE_RATE
from pipelines.asr.config import ASRPipelineConfig
from pipelines.asr.decoding import WhisperVocab
from pipelines.asr.loader import prepare_whisper_folder
from pipelines.asr.segments import Segment, split_window
from pipelines.asr.windows import WindowDecoder
from pipelines.token_prefix import longest_token_chars, trailing_ids
from shared_engine.async_engine import AsyncLLMEngine, StepObserver
from shared_engine.compute import compute_lane
from shared_engine.detokenizer import Tokenizer
from shared_engine.device import resolve_device, resolve_dtype
from shared_engine.errors import InvalidRequest
from shared_engine.llm_engine import EngineStats, LLMEngine
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatcher
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.models.whisper import CrossAttentionState, WhisperDecoder
from shared_engine.models.whisper_encoder import Int8RowsWhisperEncoder
from shared_engine.row_int8_linear import rows_int8_available

logger = logging.getLogger(__name__)

_CONTROL_START = re.compile(r"(?<=<)(?=\|)")
DIGITAL_SILENCE = 1e-4  # a window's peak below this (3 steps of 16-bit audio) holds no sound at all

WINDOW_SECONDS = 30.0
MAX_PROMPT_TOKENS = 223  # half the decoder's context, less the <|startofprev|> token
TASKS = ("transcribe", "translate")
WHISPER_CODES = {"jv": "jw"}  # ISO-639-1 codes that Whisper's tokenizer spells otherwise (Javanese)


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str  # language name, e.g. "english"
    duration: float
    segments: list[Segment]
    words: list[Word] = field(default_factory=list)  # only when word timestamps were asked for


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
        self._longest_token = longest_token_chars(self.tokenizer)
        self.features = WhisperFeatureExtractor.from_pretrained(folder)
        generation = GenerationConfig.from_pretrained(folder)
        self.vocab = WhisperVocab.from_tokenizer(self.tokenizer, generation)
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
        heads = getattr(generation, "alignment_heads", None) or []
        self.windows = WindowDecoder(
            self.engine, self.vocab, cast(WhisperDecoder, decoder), [(int(a), int(b)) for a, b in heads],
            self._decode_text, engine.max_model_len, self.lane,
        )  # fmt: skip
        logger.info("speech model %s loaded from %s (%s, %s)", self.name, folder, self.device, self.dtype)

    @property
    def multilingual(self) -> bool:
        return self.vocab.multilingual

    @property
    def languages(self) -> list[str]:
        """ISO-639-1 codes, as requests name them."""
        if not self.multilingual:
            return ["en"]
        iso = {whisper: code for code, whisper in WHISPER_CODES.items()}
        return sorted(iso.get(code, code) for code in self.vocab.languages)

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
        known = self.vocab.languages if self.multilingual else ("en",)
        if language is not None and WHISPER_CODES.get(language, language) not in known:
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
        word_timestamps: bool = False,
    ) -> Transcription:
        """Transcribe (or translate into English) 16 kHz mono ``audio`` of any length; with
        ``word_timestamps``, the time of each word too."""
        self._check(task, language, temperature)
        language = WHISPER_CODES.get(language, language) if language is not None else None
        duration = len(audio) / SAMPLE_RATE
        history = self._prompt_ids(prompt) if prompt else []
        segments: list[Segment] = []
        words: list[Word] = []
        seek = 0.0
        while duration - seek > 0.1:
            start = int(seek * SAMPLE_RATE)
            chunk = audio[start : start + int(WINDOW_SECONDS * SAMPLE_RATE)]
            window = len(chunk) / SAMPLE_RATE
            if float(np.abs(chunk).max()) < DIGITAL_SILENCE:  # nothing to hear: no decode, no imagined "you"
                seek += window
                continue
            (state,) = await self.batcher.submit([self.log_mel(chunk)])
            rid = f"{request_id}-{start}"
            language, no_speech = await self._first_step(rid, history, language, state)
            sot_sequence = self._sot_sequence(language, task)
            prompt_ids = [*self._previous(history), *sot_sequence]
            decoded = await self.windows.decode(rid, prompt_ids, state, temperature, no_speech)
            if decoded.silent:
                seek += window
                continue
            result = split_window(
                decoded.tokens, decoded.avg_logprob, self.vocab, seek, window, self._decode_text,
                len(segments), decoded.temperature,
            )  # fmt: skip
            found = [replace(s, no_speech_prob=decoded.no_speech_prob or 0.0) for s in result.segments]
            text_tokens = [t for s in found for t in s.tokens if t < self.vocab.eot]
            history.extend(t for s in found for t in s.tokens)
            span = min(max(result.advance, 0.02), window)  # what the window's segments cover
            if word_timestamps:
                # Within the span: speech cut off at the window's end is heard again by the next window,
                # which starts where the span ends (attention would place a cut-off word past that point).
                words += await self.windows.words(state, sot_sequence, text_tokens, language, seek, span)
            segments += found
            seek += span
        # Times in whole milliseconds, the last end no later than the audio's (which reads 3 decimals too).
        segments = [replace(s, end=min(s.end, math.floor(duration * 1000) / 1000)) for s in segments]
        text = "".join(s.text for s in segments).strip()
        code = language or "en"
        return Transcription(text, LANGUAGES.get(code, code), duration, segments, words)

    async def _first_step(
        self, request_id: str, history: list[int], language: str | None, state: CrossAttentionState
    ) -> tuple[str, float | None]:
        """The window's language (detected where not given) and, on a multilingual model, its no-speech
        probability: the step after <|startoftranscript|>, which the decode's prompt passes by (an
        English-only model's ends there, and its decode reports it)."""
        v = self.vocab
        if not self.multilingual:
            return "en", None
        if language is None:  # detected from the first window alone, as the reference does
            detected = await self.windows.first_step(f"{request_id}-lang", [v.sot], state)
            language = detected.language
            if not history:
                return language, detected.no_speech_prob
        step = await self.windows.first_step(f"{request_id}-sot", [*self._previous(history), v.sot], state)
        return language, step.no_speech_prob

    def _encode_text(self, text: str) -> list[int]:
        """A prompt is text: "<|0.00|>" in it is those characters, never the timestamp token. Every control
        token's text starts with "<|": encoded apart, "<" and "|" never meet to form one."""
        pieces = _CONTROL_START.split(" " + text.strip())
        return [i for piece in pieces for i in self.tokenizer.encode(piece, add_special_tokens=False)]

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's last ``MAX_PROMPT_TOKENS`` ids, all a window reads of it, from its tail only: a
        prompt of megabytes tokenized whole held the event loop for seconds."""
        return trailing_ids(self._encode_text, prompt, MAX_PROMPT_TOKENS, self._longest_token)

    def _decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _previous(self, history: list[int]) -> list[int]:
        """The text decoded so far, as the prompt's prefix (none before the first words)."""
        return [self.vocab.sot_prev, *history[-MAX_PROMPT_TOKENS:]] if history else []

    def _sot_sequence(self, language: str, task: str) -> list[int]:
        v = self.vocab
        if not self.multilingual:
            return [v.sot]
        return [v.sot, v.languages[language], v.translate if task == "translate" else v.transcribe]

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
