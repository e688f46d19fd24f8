"""gRPC servicers over the very service objects embedded mode uses (no second implementation)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np

from pipelines.tts import output_rate
from services.errors import ModelNotFound, ServiceUnavailable
from services.observability.timing import ensure_context
from services.rpc import (
    asr_pb2,
    asr_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    llm_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from services.rpc.llm_codec import output_to_proto, requests_from_proto
from services.rpc.status import to_status
from services.rpc.timing import timing_metadata
from services.tasks.asr import ASRService
from services.tasks.embedding import EmbeddingService
from services.tasks.llm import LLMService
from services.tasks.rerank import RerankService
from services.tasks.tts import TTSService
from services.tasks.vision import VisionService

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_S = TypeVar("_S")


def _pick(services: Mapping[str, _S], model: str, task: str) -> _S:
    if not services:  # the worker answers from the start, before its models have loaded
        raise ServiceUnavailable(f"the {task} worker is still loading its models")
    service = services.get(model)
    # A worker may serve models of several tasks (the embedding worker's rerankers).
    if service is None or getattr(service, "task", task) != task:
        raise ModelNotFound(model, task)
    return service


async def answer(context: grpc.aio.ServicerContext, work: Awaitable[_T]) -> _T:
    """Await ``work``; an exception ends the call with the status that describes it. The engines'
    timing goes back in the trailing metadata."""
    try:
        with ensure_context() as ctx:
            result = await work
        context.set_trailing_metadata(timing_metadata(ctx))
        return result
    except Exception as exc:
        await _fail(context, exc)
        raise  # abort raises; this keeps type checkers sure the function never falls through


async def answer_stream(context: grpc.aio.ServicerContext, stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """``stream``'s messages; an exception, before the first or after some, ends the call with the status
    that describes it."""
    try:
        async for message in stream:
            yield message
    except Exception as exc:
        await _fail(context, exc)


def _vectors(vectors: list[np.ndarray]) -> list[bytes]:
    return [np.asarray(v, dtype="<f4").tobytes() for v in vectors]


async def _fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code, message, metadata = to_status(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("request failed", exc_info=exc)
    context.set_trailing_metadata(metadata)
    await context.abort(code, message)


class LLMServicer(llm_pb2_grpc.LLMServicer):
    def __init__(self, services: Mapping[str, LLMService]) -> None:
        self.services = services

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # A cancelled call (the client went away) cancels this generator, and closing the engine
        # stream aborts the request in the engine, freeing its KV blocks.
        try:
            service = _pick(self.services, request.model, "chat")
            async for index, out in service.generate(requests_from_proto(request)):
                yield output_to_proto(index, out)
        except Exception as exc:
            await _fail(context, exc)


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServicer):
    def __init__(self, services: Mapping[str, EmbeddingService]) -> None:
        self.services = services

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "embedding")
            vectors = await service.embed([list(t.ids) for t in request.inputs])
            return embedding_pb2.EmbedResponse(dimensions=service.dimensions, vectors=_vectors(vectors))

        return await answer(context, work())


class VisionServicer(vision_pb2_grpc.VisionServicer):
    def __init__(self, services: Mapping[str, VisionService]) -> None:
        self.services = services

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "vision")
            results = await service.classify(list(request.images), request.top_k)
            return vision_pb2.ClassifyResponse(
                results=[
                    vision_pb2.Labels(
                        labels=[vision_pb2.Label(index=x.index, label=x.label, score=x.score) for x in r]
                    )
                    for r in results
                ]
            )

        return await answer(context, work())

    async def EmbedImages(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "vision")
            vectors = await service.embed_images(list(request.images))
            return vision_pb2.EmbedImagesResponse(dimensions=service.dimensions, vectors=_vectors(vectors))

        return await answer(context, work())


class SpeechRecognitionServicer(asr_pb2_grpc.SpeechRecognitionServicer):
    def __init__(self, services: Mapping[str, ASRService]) -> None:
        self.services = services

    async def Transcribe(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "asr")
            result = await service.transcribe(
                f"asr-{uuid.uuid4().hex}",
                request.audio,
                task=request.task,
                language=request.language if request.HasField("language") else None,
                prompt=request.prompt if request.HasField("prompt") else None,
                temperature=request.temperature,
                word_timestamps=request.word_timestamps,
            )
            segments = [
                asr_pb2.Segment(
                    id=s.id, start=s.start, end=s.end, text=s.text, tokens=list(s.tokens),
                    avg_logprob=s.avg_logprob, temperature=s.temperature, seek=s.seek,
                    no_speech_prob=s.no_speech_prob,
                )
                for s in result.segments
            ]  # fmt: skip
            words = [asr_pb2.Word(word=w.word, start=w.start, end=w.end) for w in result.words]
            return asr_pb2.TranscribeResponse(
                text=result.text, language=result.language, duration=result.duration, segments=segments,
                words=words,
            )  # fmt: skip

        return await answer(context, work())


class SpeechSynthesisServicer(tts_pb2_grpc.SpeechSynthesisServicer):
    def __init__(self, services: Mapping[str, TTSService]) -> None:
        self.services = services

    async def Synthesize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "tts")
            voice = request.voice if request.HasField("voice") else None
            audio, content_type = await service.speech(
                request.input, voice, request.speed, request.response_format
            )
            rate = output_rate(request.response_format, service.sample_rate)
            return tts_pb2.SynthesizeResponse(audio=audio, content_type=content_type, sample_rate=rate)

        return await answer(context, work())


class RerankServicer(rerank_pb2_grpc.RerankServicer):
    def __init__(self, services: Mapping[str, RerankService]) -> None:
        self.services = services

    async def Score(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            service = _pick(self.services, request.model, "rerank")
            result = await service.rerank(request.query, list(request.documents))
            return rerank_pb2.ScoreResponse(scores=result.scores, tokens=result.tokens)

        return await answer(context, work())


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, services: Mapping[str, Any]) -> None:
        self.services = services

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return models_pb2.ListModelsResponse(models=[model_info(s) for s in self.services.values()])


def model_info(service: Any) -> Any:
    info = models_pb2.ModelInfo(name=service.name, task=service.task)
    if service.max_model_len is not None:
        info.max_model_len = service.max_model_len
    if isinstance(service, EmbeddingService | VisionService):
        info.dimensions = service.dimensions
    if isinstance(service, TTSService):
        info.voices.extend(service.voices)
        info.sample_rate = service.sample_rate
    if isinstance(service, ASRService):
        info.multilingual = service.multilingual
    return info
