"""A transcription in each of OpenAI's response formats: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

from typing import Any

from litestar import Response

from pipelines.asr import Transcription, compression_ratio
from services.gateway.media_schemas import (
    TIMESTAMP_GRANULARITIES,
    TranscriptionSegment,
    TranscriptionWord,
    VerboseTranscription,
)
from services.gateway.media_schemas import TRANSCRIPT_FORMATS as RESPONSE_FORMATS
from services.gateway.media_schemas import Transcription as TranscriptionBody
from shared_engine.errors import InvalidRequest


def check_format(fmt: str) -> str:
    if fmt not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
            param="response_format",
        )
    return fmt


def check_granularities(values: list[str], fmt: str, task: str) -> frozenset[str]:
    """The timestamp granularities asked for (``segment`` when none is named), as OpenAI checks them:
    words only with verbose_json, which alone has room for them."""
    param = "timestamp_granularities"
    unknown = [v for v in values if v not in TIMESTAMP_GRANULARITIES]
    if unknown:
        raise InvalidRequest(
            f"timestamp_granularities must be among {', '.join(TIMESTAMP_GRANULARITIES)}, got {unknown[0]!r}",
            param=param,
        )
    if values and task != "transcribe":
        raise InvalidRequest("timestamp_granularities is only supported for transcriptions", param=param)
    if "word" in values and fmt != "verbose_json":  # ["segment"], the default, goes with any format
        raise InvalidRequest(
            f"timestamp_granularities word needs response_format verbose_json, got {fmt!r}", param=param
        )
    return frozenset(values or ("segment",))


def _clock(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def to_srt(t: Transcription) -> str:
    blocks = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcription) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_verbose(t: Transcription, task: str, granularities: frozenset[str]) -> VerboseTranscription:
    segments = [
        TranscriptionSegment(
            id=s.id,
            seek=round(s.seek * 100),  # the window's start in mel frames (10 ms), as Whisper reports it
            start=s.start,
            end=s.end,
            text=s.text,
            tokens=list(s.tokens),
            temperature=s.temperature,
            avg_logprob=round(s.avg_logprob, 6),
            compression_ratio=round(compression_ratio(s.text), 4),
            no_speech_prob=round(s.no_speech_prob, 6),
        )
        for s in t.segments
    ]
    words = [TranscriptionWord(w.word, w.start, w.end) for w in t.words]
    return VerboseTranscription(
        task, t.language, round(t.duration, 3), t.text,
        segments=segments if "segment" in granularities else None,
        words=words if "word" in granularities else None,
    )  # fmt: skip


def render(
    t: Transcription, fmt: str, task: str, granularities: frozenset[str] = frozenset({"segment"})
) -> Response[Any]:
    if fmt == "json":
        return Response(TranscriptionBody(t.text))
    if fmt == "verbose_json":
        return Response(to_verbose(t, task, granularities))
    if fmt == "srt":
        return Response(to_srt(t), media_type="text/plain")
    if fmt == "vtt":
        return Response(to_vtt(t), media_type="text/vtt")
    return Response(t.text + "\n", media_type="text/plain")
