"""Bodies of the vision and audio endpoints (msgspec Structs and multipart dataclasses, in OpenAPI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from litestar.datastructures import UploadFile
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import KwargDefinition
from msgspec import Meta, Struct

from pipelines.tts.audio_format import FORMATS as SPEECH_FORMATS
from pipelines.tts.pipeline import MAX_INPUT_CHARS, MAX_SPEED, MIN_SPEED
from services.gateway.schemas import Embedding, documented

MAX_IMAGES = 64  # images per vision request

# -- vision ----------------------------------------------------------------------------------------------


class ClassificationRequest(Struct, kw_only=True):
    image: str  # a data URL or plain base64
    model: str | None = None
    top_k: Annotated[int, Meta(ge=1, le=1000)] = 5


class ImageEmbeddingRequest(Struct, kw_only=True):
    image: str | Annotated[list[str], Meta(min_length=1, max_length=MAX_IMAGES)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None


class ClassLabel(Struct):
    label: str
    index: int
    score: float


class Classification(Struct):
    model: str
    data: list[ClassLabel]
    object: str = "list"


class ImageEmbeddingUsage(Struct):
    images: int
    prompt_tokens: int = 0
    total_tokens: int = 0


class ImageEmbeddingList(Struct):
    data: list[Embedding]
    model: str
    usage: ImageEmbeddingUsage
    object: str = "list"


# -- audio -----------------------------------------------------------------------------------------------

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
TIMESTAMP_GRANULARITIES = ("segment", "word")


@dataclass
class TranscriptionForm:
    """OpenAI's multipart form for transcriptions and translations."""

    file: UploadFile
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    # Checked by the handler and the pipeline (a 400 naming the field); here for the OpenAPI schema.
    response_format: Annotated[str, KwargDefinition(schema_extra={"enum": list(TRANSCRIPT_FORMATS)})] = "json"
    temperature: Annotated[float, KwargDefinition(schema_extra={"minimum": 0.0, "maximum": 1.0})] = 0.0
    # Also read as `timestamp_granularities[]`, the name the OpenAI SDKs send; checked by the handler.
    timestamp_granularities: Annotated[
        list[str],
        KwargDefinition(
            description="`segment` and/or `word` (with response_format verbose_json; transcriptions only)",
            schema_extra={"items": Schema(type=OpenAPIType.STRING, enum=list(TIMESTAMP_GRANULARITIES))},
        ),
    ] = field(default_factory=list)
    # Transcripts come whole (as OpenAI's whisper-1 sends them); a client asking for a stream is told so.
    stream: Annotated[bool, KwargDefinition(description="only false: transcripts are not streamed")] = False


class TranscriptionSegment(Struct):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionWord(Struct):
    word: str
    start: float
    end: float


class Transcription(Struct):
    text: str


class VerboseTranscription(Struct, omit_defaults=True):
    task: str
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None  # unless only `word` granularity was asked for
    words: list[TranscriptionWord] | None = None  # with `word` granularity


class SpeechRequest(Struct, kw_only=True):
    # The pipeline checks these limits with messages that give the numbers; documented here.
    input: Annotated[str, documented(min_length=1, max_length=MAX_INPUT_CHARS)]
    model: str | None = None
    voice: str | None = None
    response_format: Annotated[str, documented(enum=list(SPEECH_FORMATS))] = "mp3"  # OpenAI's default
    stream_format: Annotated[str, documented(enum=["audio"])] = "audio"  # OpenAI's "sse" is not served
    speed: Annotated[float, documented(minimum=MIN_SPEED, maximum=MAX_SPEED)] = 1.0
