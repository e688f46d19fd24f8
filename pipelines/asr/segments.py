"""From one 30-second window's tokens to timed segments, and where the next window starts."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipelines.asr.decoding import TIME_PRECISION, WhisperVocab


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over its zlib-compressed bytes: high for text that repeats itself."""
    raw = text.encode()
    return len(raw) / max(1, len(zlib.compress(raw)))


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: tuple[int, ...]  # text and timestamp tokens, as decoded
    avg_logprob: float
    temperature: float  # what the window was decoded at (above 0 after a fallback)
    seek: float  # where the window that holds it starts, in seconds
    no_speech_prob: float = 0.0  # of the window that holds it, read after <|startoftranscript|>


@dataclass(frozen=True)
class WindowResult:
    segments: list[Segment]
    advance: float  # seconds to move the window by


def split_window(
    tokens: Sequence[int],
    avg_logprob: float,
    vocab: WhisperVocab,
    offset: float,
    window: float,
    decode: Callable[[list[int]], str],
    first_id: int = 0,
    temperature: float = 0.0,
) -> WindowResult:
    """Segments of a window decoded with timestamps (``tokens`` without the end-of-text token). Each
    carries the window's ``avg_logprob``, as Whisper's reference implementation reports it: the value that
    decides whether the window is kept.

    When the window's last segment is closed by a timestamp pair, speech may run on past what the
    model saw: the next window starts at that last timestamp. When it ends on a single timestamp
    (the model saw the speech end), the whole window is consumed.
    """
    ts = vocab.timestamp_begin
    stamp = [t >= ts for t in tokens]
    cuts = [i for i in range(1, len(tokens)) if stamp[i] and stamp[i - 1]]
    single_ending = len(tokens) >= 2 and stamp[-1] and not stamp[-2]

    def make(lo: int, hi: int, start: float, end: float) -> Segment | None:
        text = decode([t for t in tokens[lo:hi] if t < vocab.eot])
        if not text.strip():
            return None
        sid = first_id + len(segments)
        return Segment(
            sid, round(start, 3), round(end, 3), text, tuple(tokens[lo:hi]), avg_logprob, temperature, offset
        )

    segments: list[Segment] = []
    if cuts:
        bounds = [0, *cuts] + ([len(tokens)] if single_ending else [])
        for lo, hi in itertools.pairwise(bounds):
            start = offset + (tokens[lo] - ts) * TIME_PRECISION
            end = offset + (tokens[hi - 1] - ts) * TIME_PRECISION
            seg = make(lo, hi, start, end)
            if seg is not None:
                segments.append(seg)
        advance = window if single_ending else (tokens[cuts[-1] - 1] - ts) * TIME_PRECISION
        return WindowResult(segments, advance if advance > 0 else window)
    stamps = [t for t in tokens if t >= ts]
    duration = (stamps[-1] - ts) * TIME_PRECISION if stamps and stamps[-1] > ts else window
    seg = make(0, len(tokens), offset, offset + duration)
    return WindowResult([seg] if seg is not None else [], window)
