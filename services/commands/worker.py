"""``python -m services.commands.worker --task <task>``: one modality's models behind gRPC (distributed mode).

The worker builds the same service objects the embedded gateway builds, serves them through the
servicers in services.rpc, answers the standard gRPC health-checking protocol (NOT_SERVING while its
models load, SERVING once they all have), and on SIGTERM stops taking calls and lets running ones
finish within a grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from retrieval.collections import Collections
from retrieval.vector_stores import VectorStores
from services.commands.cpus import hold_to, parse_cpu_list
from services.config.models import configured_models
from services.config.settings import HOSTED_BY, Settings
from services.observability.log_config import configure_logging
from services.observability.metrics import serve_metrics
from services.registry import create_service
from services.rpc import (
    asr_pb2_grpc,
    embedding_pb2_grpc,
    llm_pb2_grpc,
    models_pb2_grpc,
    rerank_pb2_grpc,
    retrieval_pb2_grpc,
    tts_pb2_grpc,
    vector_stores_pb2_grpc,
    vision_pb2_grpc,
)
from services.rpc.interceptors import RequestContextInterceptor
from services.rpc.retrieval_rpc import RetrievalServicer
from services.rpc.servicers import (
    EmbeddingServicer,
    LLMServicer,
    ModelsServicer,
    RerankServicer,
    SpeechRecognitionServicer,
    SpeechSynthesisServicer,
    VisionServicer,
)
from services.rpc.vector_stores_rpc import VectorStoresServicer
from services.tasks.collections import LocalCollections
from services.tasks.warmup import warm_up_all

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PORT = 50051
METRICS_PORT = 9100  # what compose.yaml gives --metrics-port; by default a worker serves no metrics
MAX_MESSAGE_BYTES = 64 << 20  # uploads (audio, images) and answers (audio) travel whole
GRACE_SECONDS = 10.0

_Register = Callable[[Any, grpc.aio.Server], None]
# task → (the gRPC service name health reports on, how to add a servicer to a server)
SERVICES: dict[str, tuple[str, _Register]] = {
    "chat": ("mmserve.llm.LLM", llm_pb2_grpc.add_LLMServicer_to_server),
    "embedding": ("mmserve.embedding.Embedding", embedding_pb2_grpc.add_EmbeddingServicer_to_server),
    "retrieval": ("mmserve.retrieval.Retrieval", retrieval_pb2_grpc.add_RetrievalServicer_to_server),
    "vision": ("mmserve.vision.Vision", vision_pb2_grpc.add_VisionServicer_to_server),
    "asr": ("mmserve.asr.SpeechRecognition", asr_pb2_grpc.add_SpeechRecognitionServicer_to_server),
    "tts": ("mmserve.tts.SpeechSynthesis", tts_pb2_grpc.add_SpeechSynthesisServicer_to_server),
}
# The retrieval worker also keeps the files and vector stores, in the store its collections are in.
VECTOR_STORES_SERVICE = "mmserve.vector_stores.VectorStores"


def build_servicer(task: str, services: dict[str, Any]) -> Any:
    """The task's servicer over ``services``, a mapping filled in once the models have loaded (until
    then every call is answered UNAVAILABLE, which callers treat as "try another replica")."""
    if task == "retrieval":
        return RetrievalServicer()
    servicers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "chat": LLMServicer,
        "embedding": EmbeddingServicer,
        "vision": VisionServicer,
        "asr": SpeechRecognitionServicer,
        "tts": SpeechSynthesisServicer,
    }
    return servicers[task](services)


TASKS = tuple(SERVICES)
# The servicers a worker adds for the model tasks it hosts beside its own (settings.HOSTED_BY).
HOSTED: dict[str, tuple[str, _Register, Callable[[dict[str, Any]], Any]]] = {
    "rerank": ("mmserve.rerank.Rerank", rerank_pb2_grpc.add_RerankServicer_to_server, RerankServicer),
}


def hosted_tasks(task: str) -> tuple[str, ...]:
    return tuple(hosted for hosted, host in HOSTED_BY.items() if host == task)


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Connections are recycled every minute (running calls get up to 10 more to finish), so that
    # gateways re-resolve dns:/// names and start using replicas added since they connected.
    ("grpc.max_connection_age_ms", 60_000),
    ("grpc.max_connection_age_grace_ms", 600_000),
]


async def in_passing_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread that ends with it. Not asyncio's executor: its threads stay, and a thread
    that ran torch keeps an OpenMP team that slows every later forward (see shared_engine/compute.py)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    threading.Thread(target=run, name="model-loader", daemon=True).start()
    return await done


def load_services(task: str, settings: Settings) -> dict[str, Any]:
    """The task's models; for retrieval, the embedding and vision models its collections embed with
    (in-process, or those services' workers when MMSERVE_ENDPOINTS names them)."""
    tasks = ("embedding", "vision") if task == "retrieval" else (task, *hosted_tasks(task))
    specs = [s for s in configured_models(settings) if s.task in tasks]
    if not specs:
        raise SystemExit(f"{settings.models_config} configures no {task} model")
    return {spec.name: create_service(spec, settings) for spec in specs}


async def serve(task: str, host: str, port: int, settings: Settings) -> None:
    service_name, register = SERVICES[task]
    stores = VectorStoresServicer() if task == "retrieval" else None
    names: tuple[str, ...] = (
        ("", service_name) if stores is None else ("", service_name, VECTOR_STORES_SERVICE)
    )
    hosted = [HOSTED[t] for t in hosted_tasks(task)]
    names += tuple(name for name, _, _ in hosted)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RequestContextInterceptor()])
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    for name in names:
        await status.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    # Every service is registered before the server starts (gRPC takes none later); they answer
    # UNAVAILABLE until the models below have loaded.
    services: dict[str, Any] = {}
    servicer = build_servicer(task, services)
    register(servicer, server)
    for _, add, make in hosted:
        add(make(services), server)
    if stores is not None:
        vector_stores_pb2_grpc.add_VectorStoresServicer_to_server(stores, server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(services), server)
    address = f"{host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    logger.info("%s worker listening on %s, loading models", task, address)
    services.update(await in_passing_thread(load_services, task, settings))
    await warm_up_all(services.values())
    if isinstance(servicer, RetrievalServicer):
        texts = [name for name, s in services.items() if s.task == "embedding"]
        collections = Collections(settings.data_dir, services, texts[0] if texts else None)
        servicer.open(LocalCollections(collections))
        if stores is not None:
            vector_stores = VectorStores.open(collections)
            stores.open(vector_stores)
            await vector_stores.resume()  # files a crash left in progress are processed again
    for name in names:
        await status.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("%s worker serving %s", task, ", ".join(services))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("%s worker stopping: finishing running calls (up to %.0f s)", task, GRACE_SECONDS)
    await status.enter_graceful_shutdown()
    await server.stop(GRACE_SECONDS)
    if isinstance(servicer, RetrievalServicer):
        if stores is not None:
            stores.close()  # stops processing files before the store closes
        servicer.close()  # saves the indexes and closes the store
    for service in services.values():
        service.shutdown()


def _cpu_list(text: str) -> tuple[int, ...]:
    try:
        return parse_cpu_list(text)
    except ValueError as exc:  # argparse would only say "invalid _cpu_list value"
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve one task's models over gRPC.")
    parser.add_argument("--task", required=True, choices=TASKS, help="which models of models.toml to serve")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help=f"Prometheus metrics at http://HOST:PORT/metrics (0: off, the default; compose: {METRICS_PORT})",
    )
    parser.add_argument(
        "--cpus",
        type=_cpu_list,
        help="run on these cores only, one OpenMP thread each (as taskset -c writes them: 0-3,6; "
        "default: every core this process may use)",
    )
    args = parser.parse_args(argv)
    if args.cpus is not None:
        try:
            hold_to(args.cpus)
        except ValueError as exc:
            parser.error(str(exc))
    settings = Settings.from_env()
    # A worker serves its own task in-process; other tasks' endpoints (the retrieval worker's embedders)
    # stay remote.
    settings = replace(settings, endpoints={k: v for k, v in settings.endpoints.items() if k != args.task})
    configure_logging(settings.log_level, settings.log_format, component=f"{args.task}-worker")
    if args.metrics_port:
        serve_metrics(args.metrics_port, args.host)
    asyncio.run(serve(args.task, args.host, args.port, settings))


if __name__ == "__main__":
    main()
