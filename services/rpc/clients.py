"""The gateway's view of services that run in workers: the same methods as the in-process services
(services/*_service.py), answered over gRPC. Text is tokenized here, as in embedded mode; the
workers hold the weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.asr import Segment, Transcription, Word
from pipelines.embedding import EmbeddingTokenizer
from pipelines.llm import ChatTokenizer, check_prompts
from pipelines.llm.loader import prepare_model_folder
from pipelines.rerank import RerankScores
from pipelines.sources import resolve_source
from pipelines.tts import check_format
from pipelines.vision import Label
from services.config.models import ModelSpec
from services.config.settings import Settings
from services.errors import ModelNotFound
from services.observability.timing import record_output
from services.rpc import (
    asr_pb2,
    asr_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    llm_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from services.rpc.channels import Channels
from services.rpc.llm_codec import output_from_proto, requests_to_proto
from services.rpc.timing import timed
from services.tasks.llm import ChatText
from shared_engine.async_engine import GenerationRequest, GroupOutputs


def _vectors(blobs: Sequence[bytes]) -> list[np.ndarray]:
    return [np.frombuffer(b, dtype="<f4").copy() for b in blobs]


class _Remote:
    task = ""

    def __init__(self, spec: ModelSpec, channels: Channels, info: Any, settings: Settings) -> None:
        if info.task != spec.task:
            raise ModelNotFound(spec.name, spec.task)
        self.spec = spec
        self.name = spec.name
        self.channels = channels
        self.info = info

    @property
    def max_model_len(self) -> int | None:
        return int(self.info.max_model_len) if self.info.HasField("max_model_len") else None

    @property
    def is_alive(self) -> bool:
        return True  # a worker that is down answers UNAVAILABLE per call (503), not a dead gateway

    def shutdown(self) -> None:
        """Channels close with the event loop that owns them."""


class RemoteEmbeddingService(_Remote):
    task = "embedding"

    def __init__(self, spec: ModelSpec, channels: Channels, info: Any, settings: Settings) -> None:
        super().__init__(spec, channels, info, settings)
        self.text = EmbeddingTokenizer(resolve_source(spec.source))
        self.tokenizer: Any = self.text.tokenizer
        self.dimensions = int(info.dimensions)

    @property
    def max_model_len(self) -> int:
        return self.text.max_input_tokens

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[list[int]]:
        return self.text.tokenize(texts, truncate)

    def check_length(self, index: int, ids: list[int], truncate: bool) -> list[int]:
        return self.text.check_length(index, ids, truncate)

    async def embed(self, token_lists: Sequence[list[int]]) -> list[np.ndarray]:
        request = embedding_pb2.EmbedRequest(
            model=self.name, inputs=[embedding_pb2.TokenIds(ids=ids) for ids in token_lists]
        )
        response = await self.channels.call(timed(embedding_pb2_grpc.EmbeddingStub), "Embed", request)
        return _vectors(response.vectors)


class RemoteVisionService(_Remote):
    task = "vision"
    modality = "image"

    @property
    def dimensions(self) -> int:
        return int(self.info.dimensions)

    async def classify(self, images: Sequence[bytes], top_k: int) -> list[list[Label]]:
        request = vision_pb2.ClassifyRequest(model=self.name, images=list(images), top_k=top_k)
        response = await self.channels.call(timed(vision_pb2_grpc.VisionStub), "Classify", request)
        return [[Label(x.index, x.label, x.score) for x in r.labels] for r in response.results]

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray]:
        request = vision_pb2.EmbedImagesRequest(model=self.name, images=list(images))
        response = await self.channels.call(timed(vision_pb2_grpc.VisionStub), "EmbedImages", request)
        return _vectors(response.vectors)


class RemoteASRService(_Remote):
    task = "asr"

    @property
    def multilingual(self) -> bool:
        return bool(self.info.multilingual)

    async def transcribe(
        self,
        request_id: str,
        audio_file: bytes,
        *,
        task: str,
        language: str | None,
        prompt: str | None,
        temperature: float,
        word_timestamps: bool = False,
    ) -> Transcription:
        request = asr_pb2.TranscribeRequest(
            model=self.name,
            audio=audio_file,
            task=task,
            language=language,
            prompt=prompt,
            temperature=temperature,
            word_timestamps=word_timestamps,
        )
        r = await self.channels.call(timed(asr_pb2_grpc.SpeechRecognitionStub), "Transcribe", request)
        segments = [
            Segment(
                s.id, s.start, s.end, s.text, tuple(s.tokens), s.avg_logprob, s.temperature, s.seek,
                s.no_speech_prob,
            )
            for s in r.segments
        ]  # fmt: skip
        words = [Word(w.word, w.start, w.end) for w in r.words]
        return Transcription(r.text, r.language, r.duration, segments, words)


class RemoteTTSService(_Remote):
    task = "tts"

    @property
    def voices(self) -> list[str]:
        return list(self.info.voices)

    @property
    def sample_rate(self) -> int:
        return int(self.info.sample_rate)

    async def speech(self, text: str, voice: str | None, speed: float, fmt: str) -> tuple[bytes, str]:
        check_format(fmt)
        request = tts_pb2.SynthesizeRequest(
            model=self.name, input=text, voice=voice, speed=speed, response_format=fmt
        )
        response = await self.channels.call(timed(tts_pb2_grpc.SpeechSynthesisStub), "Synthesize", request)
        return bytes(response.audio), str(response.content_type)


class RemoteLLMService(_Remote, ChatText):
    task = "chat"

    def __init__(self, spec: ModelSpec, channels: Channels, info: Any, settings: Settings) -> None:
        super().__init__(spec, channels, info, settings)
        self.text = ChatTokenizer(prepare_model_folder(spec.source, settings.model_cache_dir), spec.name)

    @property
    def max_model_len(self) -> int:
        return int(self.info.max_model_len)

    async def generate(self, requests: Sequence[GenerationRequest]) -> GroupOutputs:
        """One call for the group, so one worker's engine takes it whole (see llm.proto)."""
        check_prompts(requests)
        request = requests_to_proto(self.name, requests)
        request_ids = [r.request_id for r in requests]
        stream = self.channels.stream(llm_pb2_grpc.LLMStub, "Generate", request, requests[0].prompt_token_ids)
        async for message in stream:
            index, out = output_from_proto(message, request_ids)
            record_output(out)
            yield index, out


class RemoteRerankService(_Remote):
    task = "rerank"

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankScores:
        request = rerank_pb2.ScoreRequest(model=self.name, query=query, documents=list(documents))
        response = await self.channels.call(timed(rerank_pb2_grpc.RerankStub), "Score", request)
        return RerankScores(list(response.scores), int(response.tokens))


REMOTE_SERVICES: dict[str, type[_Remote]] = {
    "chat": RemoteLLMService,
    "embedding": RemoteEmbeddingService,
    "vision": RemoteVisionService,
    "asr": RemoteASRService,
    "tts": RemoteTTSService,
    "rerank": RemoteRerankService,
}
