"""One 30-second window on the shared engine: its language, how likely it holds no speech, its tokens
(greedy, hotter again where that fails), and the times of its words."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from pipelines.asr.alignment import Word, alignment_scores, window_words
from pipelines.asr.decoding import (
    TIME_PRECISION,
    NoSpeechProbe,
    OnlyTokens,
    SuppressTokens,
    TimestampRules,
    WhisperVocab,
)
from pipelines.asr.segments import compression_ratio
from shared_engine.async_engine import AsyncLLMEngine
from shared_engine.compute import Lane
from shared_engine.models.whisper import CrossAttentionState, WhisperDecoder
from shared_engine.outputs import FinishReason, RequestOutput
from shared_engine.sampling_params import LogitsProcessor, SamplingParams

MAX_WINDOW_TOKENS = 224
# A window that decodes into highly repetitive text, never ends, or is improbable on average is
# decoded again hotter (the reference implementation's defaults).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_COMPRESSION_RATIO = 2.4
MIN_AVG_LOGPROB = -1.0
# A window that the model finds likely silent, and whose text is improbable, holds no speech: its text
# is what Whisper imagines in silence ("you", "Thank you."), dropped as the reference implementation does.
NO_SPEECH_THRESHOLD = 0.6


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None
    temperature: float = 0.0
    no_speech_prob: float | None = None  # the window's, read after <|startoftranscript|>
    end_logprob: float = 0.0  # of the end-of-text token, which ``tokens`` leave out

    @property
    def avg_logprob(self) -> float:
        """Per token, the end of text included (as the reference implementation counts)."""
        return (sum(self.logprobs) + self.end_logprob) / (len(self.logprobs) + 1)

    @property
    def silent(self) -> bool:
        return (
            self.no_speech_prob is not None
            and self.no_speech_prob > NO_SPEECH_THRESHOLD
            and self.avg_logprob < MIN_AVG_LOGPROB
        )


@dataclass(frozen=True)
class FirstStep:
    language: str  # the most likely language code ("en" on English-only models)
    no_speech_prob: float | None


class WindowDecoder:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        vocab: WhisperVocab,
        decoder: WhisperDecoder,
        alignment_heads: Sequence[tuple[int, int]],
        decode_text: Callable[[list[int]], str],
        max_target_len: int,
        lane: Lane,
    ) -> None:
        self.engine, self.vocab, self.decoder, self.lane = engine, vocab, decoder, lane
        self.heads = list(alignment_heads)
        self.decode_text = decode_text
        self.max_target_len = max_target_len
        self._rules = (SuppressTokens(vocab), TimestampRules(vocab))

    async def first_step(self, request_id: str, prompt: list[int], state: CrossAttentionState) -> FirstStep:
        """One step after ``prompt`` (which ends in <|startoftranscript|>): the likeliest language and the
        probability that the window holds no speech."""
        v = self.vocab
        probe = NoSpeechProbe(v)
        processors: tuple[LogitsProcessor, ...] = (probe,)
        if v.multilingual:
            processors += (OnlyTokens(list(v.languages.values())),)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, skip_special_tokens=False, logits_processors=processors
        )
        decoded = await self._collect(self.engine.generate(request_id, prompt, params, state))
        by_id = {i: code for code, i in v.languages.items()}
        language = by_id.get(decoded.tokens[0], "en") if decoded.tokens else "en"
        return FirstStep(language, probe.probability)

    async def decode(
        self,
        request_id: str,
        prompt: list[int],
        state: CrossAttentionState,
        temperature: float,
        no_speech_prob: float | None = None,
    ) -> Decoded:
        """Greedy first; hotter again while the result loops, never ends or is improbable, unless it is
        silence. When every attempt fails a check, the most probable one on average wins.
        ``no_speech_prob``: the window's, where a step of its own read it (else where ``prompt`` ends in
        <|startoftranscript|>, this decode reads it)."""
        temperatures = FALLBACK_TEMPERATURES if temperature == 0 else (temperature,)
        attempts: list[Decoded] = []
        room = min(MAX_WINDOW_TOKENS, self.max_target_len - len(prompt))
        probe = NoSpeechProbe(self.vocab)  # the first step is the same for every attempt
        for i, t in enumerate(temperatures):
            # Seeded: the same audio gets the same transcript, fallbacks included.
            params = SamplingParams(
                max_tokens=room, temperature=t, seed=i, logprobs=0, skip_special_tokens=False,
                logits_processors=(probe, *self._rules),
            )  # fmt: skip
            stream = self.engine.generate(f"{request_id}-t{i}", prompt, params, state)
            decoded = await self._collect(stream, t)
            if no_speech_prob is None and prompt and prompt[-1] == self.vocab.sot:
                no_speech_prob = probe.probability
            decoded = replace(decoded, no_speech_prob=no_speech_prob)
            attempts.append(decoded)
            text = self.decode_text([x for x in decoded.tokens if x < self.vocab.eot])
            looping = compression_ratio(text) > MAX_COMPRESSION_RATIO
            if decoded.silent or (
                decoded.finish_reason is not FinishReason.LENGTH
                and not looping
                and decoded.avg_logprob >= MIN_AVG_LOGPROB
            ):
                return decoded
        return max(attempts, key=lambda d: d.avg_logprob)

    async def words(
        self,
        state: CrossAttentionState,
        sot_sequence: list[int],
        text_tokens: list[int],
        language: str,
        offset: float,
        window: float,
    ) -> list[Word]:
        """The timed words of a window's ``text_tokens`` (``offset`` and ``window`` in seconds)."""
        if not text_tokens or not self.heads:
            return []
        tokens = [*sot_sequence, self.vocab.no_timestamps, *text_tokens]
        frames = max(1, round(window / TIME_PRECISION))
        scores = await self.lane.run_async(alignment_scores, self.decoder, state, tokens, self.heads, frames)
        # The rows that predict each text token and the end of text: from <|notimestamps|> on.
        rows = scores[:, len(sot_sequence) :]
        return window_words(rows, text_tokens, self.decode_text, language, offset, window)

    async def _collect(self, stream: AsyncIterator[RequestOutput], temperature: float = 0.0) -> Decoded:
        tokens: list[int] = []
        logprobs: list[float] = []
        reason: FinishReason | None = None
        async for out in stream:
            tokens.extend(out.token_ids)
            logprobs.extend(lp.logprob for lp in out.logprobs)
            reason = out.finish_reason
        end = 0.0
        if tokens and tokens[-1] == self.vocab.eot:
            tokens.pop()
            end = logprobs[len(tokens)]
            logprobs = logprobs[: len(tokens)]
        return Decoded(tokens, logprobs, reason, temperature, end_logprob=end)
