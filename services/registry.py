"""Which service answers for which model name, and whether they are all loaded."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from retrieval.collections import Collections, Embedder, ImageEmbedder
from retrieval.vector_stores import VectorStores
from services.config.models import ModelSpec
from services.config.settings import Settings, worker_task
from services.errors import ModelNotFound, ServiceUnavailable
from services.observability.metrics import EncoderMetrics, EngineMetrics, note_model
from services.rpc.channels import Channels, list_models
from services.rpc.clients import (
    REMOTE_SERVICES,
    RemoteASRService,
    RemoteEmbeddingService,
    RemoteLLMService,
    RemoteRerankService,
    RemoteTTSService,
    RemoteVisionService,
)
from services.rpc.retrieval_rpc import RemoteCollections
from services.rpc.routing import Router, RoutingConfig
from services.rpc.vector_stores_client import RemoteVectorStores
from services.tasks.asr import ASRService
from services.tasks.collections import CollectionsAPI, LocalCollections
from services.tasks.embedding import EmbeddingService
from services.tasks.llm import LLMService
from services.tasks.rerank import RerankService
from services.tasks.tts import TTSService
from services.tasks.vector_stores import VectorStoresAPI
from services.tasks.vision import VisionService
from services.tasks.warmup import warm_up_all
from shared_engine.compute import compute_lane, drain_cpu_lane

logger = logging.getLogger(__name__)

WORKER_WAIT_S = 900.0  # how long a starting gateway waits for a task's workers to load their models

Embeddings = EmbeddingService | RemoteEmbeddingService
Vision = VisionService | RemoteVisionService
Speech = ASRService | RemoteASRService
Synthesis = TTSService | RemoteTTSService
Chat = LLMService | RemoteLLMService
Reranker = RerankService | RemoteRerankService
REMOTE_TYPES = tuple(REMOTE_SERVICES.values())
EMBEDDING_SERVICES = (EmbeddingService, RemoteEmbeddingService)
Service = Chat | Embeddings | Vision | Speech | Synthesis | Reranker
ServiceFactory = Callable[[ModelSpec], Service]


def remote_service(spec: ModelSpec, settings: Settings) -> Service:
    """A client for the model in the task's workers (distributed mode), once a worker lists it."""
    targets = settings.endpoints[worker_task(spec.task)]
    infos = {m.name: m for m in list_models(targets, WORKER_WAIT_S)}
    if spec.name not in infos:
        raise ModelNotFound(spec.name, spec.task)
    router = Router(RoutingConfig(policy=settings.chat_routing if spec.task == "chat" else "round_robin"))
    channels = Channels(spec.task, targets, settings.rpc_timeout_s, router)
    return REMOTE_SERVICES[spec.task](spec, channels, infos[spec.name], settings)  # type: ignore[return-value]


def remote_collections(settings: Settings) -> CollectionsAPI:
    """The retrieval worker's collections, once it is ready."""
    targets = settings.endpoints["retrieval"]
    list_models(targets, WORKER_WAIT_S)
    return RemoteCollections(Channels("retrieval", targets, settings.rpc_timeout_s))


def remote_vector_stores(settings: Settings) -> VectorStoresAPI:
    """The retrieval worker's files and vector stores, once it is ready."""
    targets = settings.endpoints["retrieval"]
    list_models(targets, WORKER_WAIT_S)
    return RemoteVectorStores(Channels("retrieval", targets, settings.rpc_timeout_s))


def create_service(spec: ModelSpec, settings: Settings) -> Service:
    """The service for a model: in-process, or its workers' when endpoints name its task.

    An in-process model is built on the CPU compute lane, the thread that runs every CPU forward: a thread
    that once ran torch's parallel CPU code keeps its own team of OpenMP helpers, and with a second team
    beside the lane's libgomp puts every helper to sleep after each parallel region. Measured on 2 cores:
    the chat model built on another thread than its steps ran on took 16.8 ms a decode step, not 8.5."""
    if worker_task(spec.task) in settings.endpoints:
        return remote_service(spec, settings)
    return compute_lane("cpu").run(_local_service, spec, settings)


def _local_service(spec: ModelSpec, settings: Settings) -> Service:
    on_batch = EncoderMetrics(spec.name, spec.task)
    if spec.task == "embedding":
        return EmbeddingService(spec, on_batch)
    if spec.task == "vision":
        return VisionService(spec, settings, on_batch)
    if spec.task == "asr":
        return ASRService(spec, settings, EngineMetrics(spec.name), on_batch)
    if spec.task == "tts":
        return TTSService(spec, on_batch)
    if spec.task == "rerank":
        return RerankService(spec, settings, on_batch)
    return LLMService(spec, settings, EngineMetrics(spec.name))


class ModelRegistry:
    """Holds one service per configured model; loads them in the background so /health answers at
    once and /ready turns 200 only when every model is loaded."""

    def __init__(
        self,
        specs: list[ModelSpec],
        factory: ServiceFactory,
        data_dir: Path | None = None,
        remote_collections: Callable[[], CollectionsAPI] | None = None,
        remote_vector_stores: Callable[[], VectorStoresAPI] | None = None,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.factory = factory
        self.services: dict[str, Service] = {}
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self.data_dir = data_dir
        self._collections: CollectionsAPI | None = None
        self._vector_stores: VectorStoresAPI | None = None
        self.remote_collections = remote_collections
        self.remote_vector_stores = remote_vector_stores
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None

    def start_loading(self) -> None:
        self._thread = threading.Thread(target=self.load_all, name="model-loader", daemon=True)
        self._thread.start()

    def load_all(self) -> None:
        try:
            for spec in self.specs.values():
                self.services[spec.name] = self.factory(spec)
            # The models this process runs answer one request before it reports ready (remote ones are
            # warmed by their workers); on this thread's own loop: the services bind none.
            local = [s for s in self.services.values() if not isinstance(s, REMOTE_TYPES)]
            asyncio.run(warm_up_all(local))
            if self.remote_collections is not None:
                self._collections = self.remote_collections()
                if self.remote_vector_stores is not None:
                    self._vector_stores = self.remote_vector_stores()
                return
            embedders: dict[str, Embedder | ImageEmbedder] = {
                name: s  # type: ignore[misc]
                for name, s in self.services.items()
                if s.task in ("embedding", "vision")
            }
            if self.data_dir is not None and embedders:
                texts = [n for n, s in self.services.items() if s.task == "embedding"]
                store = Collections(self.data_dir, embedders, texts[0] if texts else None)
                self._collections = LocalCollections(store)
                self._vector_stores = VectorStores.open(store)
        except BaseException as exc:
            logger.exception("loading models failed")
            self.load_error = exc
        finally:
            self._loaded.set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    async def resume_file_processing(self) -> None:
        """Once loaded, process again the files a crash or a stop left in progress, on the server's loop
        (a worker holding the vector stores resumes its own)."""
        while not self._loaded.is_set():
            await asyncio.sleep(0.2)
        if isinstance(self._vector_stores, VectorStores):
            await self._vector_stores.resume()

    @property
    def failed(self) -> bool:
        """Loading failed or a loaded service died: waiting will not make it ready."""
        return self.load_error is not None or any(not s.is_alive for s in self.services.values())

    @property
    def ready(self) -> bool:
        return (
            self._loaded.is_set()
            and self.load_error is None
            and all(s.is_alive for s in self.services.values())
        )

    def get(self, name: str, task: str) -> Service:
        spec = self.specs.get(name)
        if spec is None or spec.task != task:
            raise ModelNotFound(name, task)
        note_model(name)
        service = self.services.get(name)
        if service is None:
            reason = f"failed to load: {self.load_error}" if self.load_error else "still loading"
            raise ServiceUnavailable(f"model `{name}` is {reason}")
        if not service.is_alive:
            raise ServiceUnavailable(f"model `{name}` has stopped")
        return service

    def _typed(self, name: str, task: str, kinds: tuple[type, ...]) -> Any:
        service = self.get(name, task)
        if not isinstance(service, kinds):
            raise ModelNotFound(name, task)
        return service

    def chat(self, name: str) -> Chat:
        return cast(Chat, self._typed(name, "chat", (LLMService, RemoteLLMService)))

    def embedding(self, name: str) -> Embeddings:
        return cast(Embeddings, self._typed(name, "embedding", EMBEDDING_SERVICES))

    def text_model(self, name: str) -> Chat | Embeddings:
        """A model whose tokenizer /tokenize and /detokenize serve: a chat or an embedding model."""
        spec = self.specs.get(name)
        if spec is not None and spec.task == "embedding":
            return self.embedding(name)
        if spec is None or spec.task != "chat":
            raise ModelNotFound(name, "chat or embedding")
        return self.chat(name)

    def vision(self, name: str) -> Vision:
        return cast(Vision, self._typed(name, "vision", (VisionService, RemoteVisionService)))

    def asr(self, name: str) -> Speech:
        return cast(Speech, self._typed(name, "asr", (ASRService, RemoteASRService)))

    def tts(self, name: str) -> Synthesis:
        return cast(Synthesis, self._typed(name, "tts", (TTSService, RemoteTTSService)))

    def rerank(self, name: str) -> Reranker:
        return cast(Reranker, self._typed(name, "rerank", (RerankService, RemoteRerankService)))

    def default_model(self, task: str) -> str:
        """The first configured model of a task (requests may leave ``model`` out where OpenAI allows)."""
        for spec in self.specs.values():
            if spec.task == task:
                return spec.name
        raise ModelNotFound("", task)

    @property
    def collections(self) -> CollectionsAPI:
        if self._collections is None:
            raise self._retrieval_unavailable()
        return self._collections

    @property
    def vector_stores(self) -> VectorStoresAPI:
        """Files and vector stores (kept with the collections)."""
        if self._vector_stores is None:
            raise self._retrieval_unavailable()
        return self._vector_stores

    def _retrieval_unavailable(self) -> ServiceUnavailable:
        if self.data_dir is None or (self._loaded.is_set() and self.load_error is None):
            return ServiceUnavailable("retrieval needs an embedding model; none is configured")
        return ServiceUnavailable("retrieval is not ready: models are still loading or failed to load")

    def shutdown(self) -> None:
        if isinstance(self._vector_stores, VectorStores):
            self._vector_stores.close()  # stops processing files before the store closes
        if self._collections is not None:
            self._collections.close()
        for service in self.services.values():
            service.shutdown()
        if not drain_cpu_lane():
            logger.warning("a forward was still running after 30 s; exiting under it may abort the process")
