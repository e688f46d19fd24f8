"""Vision and audio endpoints (thin handlers; decoding rules live in the pipelines)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import Body, JSONBody

from pipelines.tts import FORMATS as SPEECH_FORMATS
from pipelines.tts import output_rate
from services.gateway.api_docs import (
    JSON,
    SERVICE_ERRORS,
    binary,
    component,
    errors,
    inline,
    multipart,
    operation,
)
from services.gateway.embeddings import check_dimensions, encode, shorten
from services.gateway.image_requests import image_request
from services.gateway.media_schemas import (
    MAX_IMAGES,
    Classification,
    ClassificationRequest,
    ClassLabel,
    ImageEmbeddingList,
    ImageEmbeddingRequest,
    ImageEmbeddingUsage,
    SpeechRequest,
    Transcription,
    TranscriptionForm,
    VerboseTranscription,
)
from services.gateway.schemas import Embedding
from services.gateway.transcripts import check_format, check_granularities, render
from services.registry import ModelRegistry
from shared_engine.errors import InvalidRequest

Registry = NamedDependency[ModelRegistry]
Multipart = Body(media_type=RequestEncodingType.MULTI_PART)

MULTIPART = "multipart/form-data"
_MODEL = Schema(type=OpenAPIType.STRING, description="the vision model; the first configured one if omitted")
_DIMENSIONS = "the first d components, renormalised (at most the model's own)"
_IMAGE_ERRORS = errors(
    400, 404, 413, *SERVICE_ERRORS, e413="The body is past the upload limit, or an image past the pixel limit"
)
_CLASSIFY = operation(
    request={
        JSON: inline(ClassificationRequest),
        MULTIPART: multipart(
            {
                "file": binary("JPEG, PNG, WebP or GIF (first frame)"),
                "model": _MODEL,
                "top_k": Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=1000, default=5),
            },
            required=["file"],
        ),
    }
)
_EMBED = operation(
    request={
        JSON: inline(ImageEmbeddingRequest),
        MULTIPART: multipart(
            {
                "file": Schema(
                    type=OpenAPIType.ARRAY,
                    items=binary(),
                    min_items=1,
                    max_items=MAX_IMAGES,
                    description="one `file` part per image",
                ),
                "model": _MODEL,
                "encoding_format": Schema(type=OpenAPIType.STRING, enum=["float", "base64"], default="float"),
                "dimensions": Schema(type=OpenAPIType.INTEGER, minimum=1, description=_DIMENSIONS),
            },
            required=["file"],
        ),
    }
)
_AUDIO_ERRORS = errors(
    400,
    404,
    413,
    *SERVICE_ERRORS,
    e413="The upload is past the size limit, or the audio past the length limit",
)
# json and verbose_json answer a JSON object; text and srt plain text; vtt WebVTT.
_TRANSCRIPT = operation(
    success={
        JSON: Schema(any_of=[component("Transcription"), component("VerboseTranscription")]),
        "text/plain": Schema(type=OpenAPIType.STRING),
        "text/vtt": Schema(type=OpenAPIType.STRING),
    },
    replace_success=True,
)
_TRANSCRIPT_OK = ResponseSpec(
    # A union registers both schemas (_TRANSCRIPT documents the choice); litestar's stubs want one type.
    cast(Any, Transcription | VerboseTranscription),
    description="The transcript in `response_format`",
    generate_examples=False,
)
_SPEECH = operation(
    success={audio.content_type: binary() for audio in SPEECH_FORMATS.values()},
    replace_success=True,
)


class VisionController(Controller):
    path = "/v1/vision"
    tags = ["vision"]

    @post(
        "/classifications",
        status_code=200,
        summary="Top-k ImageNet labels of one image (multipart `file`, or JSON with a data URL/base64)",
        responses=_IMAGE_ERRORS,
        operation_class=_CLASSIFY,
    )
    async def classify(self, request: Request[Any, Any, Any], registry: Registry) -> Classification:
        images, body = await image_request(request, ClassificationRequest)
        if len(images) != 1:
            raise InvalidRequest("classification takes exactly one image", param="file")  # multipart only
        model = body.model or registry.default_model("vision")
        (labels,) = await registry.vision(model).classify(images, body.top_k)
        return Classification(model, [ClassLabel(x.label, x.index, x.score) for x in labels])

    @post(
        "/embeddings",
        status_code=200,
        summary="L2-normalised image embeddings (multipart `file` parts, or JSON `image` string or list)",
        responses=_IMAGE_ERRORS,
        operation_class=_EMBED,
    )
    async def embed(self, request: Request[Any, Any, Any], registry: Registry) -> ImageEmbeddingList:
        images, body = await image_request(request, ImageEmbeddingRequest)
        model = body.model or registry.default_model("vision")
        service = registry.vision(model)
        check_dimensions(body.dimensions, service.dimensions)
        vectors = [shorten(v, body.dimensions) for v in await service.embed_images(images)]
        data = [Embedding(index=i, embedding=encode(v, body.encoding_format)) for i, v in enumerate(vectors)]
        return ImageEmbeddingList(data, model, ImageEmbeddingUsage(images=len(images)))


class AudioController(Controller):
    path = "/v1/audio"
    tags = ["audio"]

    async def _transcribe(
        self, form: TranscriptionForm, request: Request[Any, Any, Any], registry: ModelRegistry, task: str
    ) -> Response[Any]:
        if form.stream:
            raise InvalidRequest("stream is not supported: the transcript comes whole", param="stream")
        fmt = check_format(form.response_format)
        named = (await request.form()).getall("timestamp_granularities[]", [])  # the OpenAI SDKs' name
        granularities = check_granularities([*form.timestamp_granularities, *named], fmt, task)
        model = form.model or _default_speech_model(registry, task)
        service = registry.asr(model)
        if task == "translate" and not service.multilingual:
            raise InvalidRequest(f"model {model!r} is English-only: it cannot translate", param="model")
        result = await service.transcribe(
            f"asr-{uuid.uuid4().hex}",
            await form.file.read(),
            task=task,
            language=form.language or None,
            prompt=form.prompt or None,
            temperature=form.temperature,
            word_timestamps="word" in granularities,
        )
        return render(result, fmt, task, granularities)

    @post(
        "/transcriptions",
        status_code=200,
        summary="Speech to text (OpenAI-compatible multipart form)",
        responses={200: _TRANSCRIPT_OK, **_AUDIO_ERRORS},
        operation_class=_TRANSCRIPT,
    )
    async def transcriptions(
        self,
        data: Annotated[TranscriptionForm, Multipart],
        request: Request[Any, Any, Any],
        registry: Registry,
    ) -> Response[Any]:
        return await self._transcribe(data, request, registry, "transcribe")

    @post(
        "/translations",
        status_code=200,
        summary="Speech in any language to English text (multilingual models)",
        responses={200: _TRANSCRIPT_OK, **_AUDIO_ERRORS},
        operation_class=_TRANSCRIPT,
    )
    async def translations(
        self,
        data: Annotated[TranscriptionForm, Multipart],
        request: Request[Any, Any, Any],
        registry: Registry,
    ) -> Response[Any]:
        return await self._transcribe(data, request, registry, "translate")

    @post(
        "/speech",
        status_code=200,
        summary="Text to speech: mp3 (default, as OpenAI's), wav, flac, opus (in Ogg) or pcm (16-bit, mono)",
        responses=errors(400, 404, 413, *SERVICE_ERRORS),
        operation_class=_SPEECH,
    )
    async def speech(self, data: JSONBody[SpeechRequest], registry: Registry) -> Response[bytes]:
        if data.stream_format != "audio":  # OpenAI's "sse" sends events; here the audio comes as one body
            raise InvalidRequest(
                f"stream_format {data.stream_format!r} is not supported", param="stream_format"
            )
        service = registry.tts(data.model or registry.default_model("tts"))
        audio, content_type = await service.speech(data.input, data.voice, data.speed, data.response_format)
        rate = output_rate(data.response_format, service.sample_rate)
        return Response(audio, media_type=content_type, headers={"X-Sample-Rate": str(rate)})


def _default_speech_model(registry: ModelRegistry, task: str) -> str:
    """The first served speech model; for a translation, the first multilingual one."""
    first = registry.default_model("asr")
    if task != "translate":
        return first
    names = [spec.name for spec in registry.specs.values() if spec.task == "asr"]
    for name in names:
        if registry.asr(name).multilingual:
            return name
    raise InvalidRequest(
        f"translation needs a multilingual speech model; those served here are English-only: "
        f"{', '.join(names)}",
        param="model",
    )
