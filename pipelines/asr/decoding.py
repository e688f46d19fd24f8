"""Whisper's special tokens and the decoding rules it needs, as engine logits processors.

The rules are those of the reference implementation: special tokens never appear in a transcript;
the first token of a window is a timestamp no later than 1 s; timestamps come in pairs (end of one
segment, start of the next) and never go back in time; when the timestamps together are more
likely than any single text token, a timestamp is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_INITIAL_TIMESTAMP = 1.0


@dataclass(frozen=True)
class WhisperVocab:
    eot: int
    sot: int
    sot_prev: int
    transcribe: int
    translate: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # "en" → id of <|en|>; empty for English-only models
    suppress: tuple[int, ...]  # non-speech symbols the model was trained to avoid
    begin_suppress: tuple[int, ...]  # tokens that may not start a transcript (blank, end of text)
    no_speech: int | None = None  # <|nospeech|> (<|nocaptions|> in older vocabularies)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, generation_config: Any) -> WhisperVocab:
        known = tokenizer.get_vocab()

        def tid(token: str) -> int:
            if token not in known:
                raise ValueError(f"the Whisper tokenizer has no {token} token")
            return int(known[token])

        lang_to_id = getattr(generation_config, "lang_to_id", None) or {}
        return cls(
            eot=tid("<|endoftext|>"),
            sot=tid("<|startoftranscript|>"),
            sot_prev=tid("<|startofprev|>"),
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            no_timestamps=tid("<|notimestamps|>"),
            timestamp_begin=tid("<|0.00|>"),
            languages={k.strip("<|>"): int(v) for k, v in lang_to_id.items()},
            suppress=tuple(int(t) for t in getattr(generation_config, "suppress_tokens", None) or ()),
            begin_suppress=tuple(
                int(t) for t in getattr(generation_config, "begin_suppress_tokens", None) or ()
            ),
            no_speech=next((int(known[t]) for t in ("<|nospeech|>", "<|nocaptions|>") if t in known), None),
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin


class SuppressTokens:
    """Special tokens (all but end-of-text) and the model's non-speech symbols never appear; a
    transcript does not start blank."""

    def __init__(self, vocab: WhisperVocab) -> None:
        self.eot, self.ts_begin = vocab.eot, vocab.timestamp_begin
        self.suppress = torch.tensor(vocab.suppress, dtype=torch.long)
        self.begin = torch.tensor(vocab.begin_suppress, dtype=torch.long)

    def __call__(self, outputs: Sequence[int], logits: torch.Tensor) -> None:
        logits[self.eot + 1 : self.ts_begin] = float("-inf")
        logits[self.suppress.to(logits.device)] = float("-inf")
        if not outputs:
            logits[self.begin.to(logits.device)] = float("-inf")


class NoTimestamps:
    def __init__(self, vocab: WhisperVocab) -> None:
        self.ts_begin = vocab.timestamp_begin

    def __call__(self, outputs: Sequence[int], logits: torch.Tensor) -> None:
        logits[self.ts_begin :] = float("-inf")


class TimestampRules:
    def __init__(self, vocab: WhisperVocab) -> None:
        self.eot, self.ts_begin = vocab.eot, vocab.timestamp_begin
        self.max_initial = self.ts_begin + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)

    def __call__(self, outputs: Sequence[int], logits: torch.Tensor) -> None:
        ts = self.ts_begin
        inf = float("-inf")
        last_ts = len(outputs) >= 1 and outputs[-1] >= ts
        penultimate_ts = len(outputs) < 2 or outputs[-2] >= ts
        if last_ts:
            if penultimate_ts:  # a pair just closed: text (or the end) must follow
                logits[ts:] = inf
            else:  # an open segment end: another timestamp or the end of text
                logits[: self.eot] = inf
        latest = next((t for t in reversed(outputs) if t >= ts), None)
        if latest is not None:
            # Never back in time, and every segment has a non-zero length.
            floor = latest if last_ts and not penultimate_ts else latest + 1
            logits[ts:floor] = inf
        else:
            logits[:ts] = inf
            logits[self.max_initial + 1 :] = inf
        # A timestamp when their total probability beats every text token's: the comparison of log
        # probabilities, whose shared normaliser cancels.
        if torch.logsumexp(logits[ts:], dim=-1) > logits[:ts].max():
            logits[:ts] = inf


class NoSpeechProbe:
    """Records the probability of the no-speech token at a request's first step, before any rule
    suppresses it; must come first among the processors. Whisper reads it after <|startoftranscript|>."""

    def __init__(self, vocab: WhisperVocab) -> None:
        self.token = vocab.no_speech
        self.probability: float | None = None

    def __call__(self, outputs: Sequence[int], logits: torch.Tensor) -> None:
        if outputs or self.probability is not None or self.token is None:
            return
        self.probability = float(torch.softmax(logits.float(), dim=-1)[self.token])


class OnlyTokens:
    """Restricts the next token to a set (language identification)."""

    def __init__(self, allowed: Sequence[int]) -> None:
        self.allowed = torch.tensor(sorted(allowed), dtype=torch.long)

    def __call__(self, outputs: Sequence[int], logits: torch.Tensor) -> None:
        keep = logits[self.allowed.to(logits.device)].clone()
        logits.fill_(float("-inf"))
        logits[self.allowed.to(logits.device)] = keep
