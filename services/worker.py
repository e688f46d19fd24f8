"""``python -m services.worker --task <task>``: one modality's models behind gRPC (distributed mode).

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
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.model_config import load_model_specs
from services.registry import create_service
from services.rpc import (
    asr_pb2_grpc,
    embedding_pb2_grpc,
    llm_pb2_grpc,
    models_pb2_grpc,
    tts_pb2_grpc,
    vision_pb2_grpc,
)
from services.rpc.servicers import (
    EmbeddingServicer,
    LLMServicer,
    ModelsServicer,
    SpeechRecognitionServicer,
    SpeechSynthesisServicer,
    VisionServicer,
)
from services.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 50051
MAX_MESSAGE_BYTES = 64 << 20  # uploads (audio, images) and answers (audio) travel whole
GRACE_SECONDS = 10.0

# task → (register the servicer on a server, the gRPC service name health reports on)
_Register = Callable[[Any, grpc.aio.Server], None]
SERVICERS: dict[str, tuple[Callable[[dict[str, Any]], Any], _Register, str]] = {
    "chat": (LLMServicer, llm_pb2_grpc.add_LLMServicer_to_server, "mmserve.llm.LLM"),
    "embedding": (
        EmbeddingServicer, embedding_pb2_grpc.add_EmbeddingServicer_to_server, "mmserve.embedding.Embedding"
    ),
    "vision": (VisionServicer, vision_pb2_grpc.add_VisionServicer_to_server, "mmserve.vision.Vision"),
    "asr": (
        SpeechRecognitionServicer, asr_pb2_grpc.add_SpeechRecognitionServicer_to_server,
        "mmserve.asr.SpeechRecognition",
    ),
    "tts": (
        SpeechSynthesisServicer, tts_pb2_grpc.add_SpeechSynthesisServicer_to_server,
        "mmserve.tts.SpeechSynthesis",
    ),
}  # fmt: skip
TASKS = tuple(SERVICERS)
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def load_services(task: str, settings: Settings) -> dict[str, Any]:
    specs = [s for s in load_model_specs(settings.models_config) if s.task == task]
    if not specs:
        raise SystemExit(f"{settings.models_config} configures no {task} model")
    return {spec.name: create_service(spec, settings) for spec in specs}


async def serve(task: str, host: str, port: int, settings: Settings) -> None:
    make_servicer, register, service_name = SERVICERS[task]
    server = grpc.aio.server(options=SERVER_OPTIONS)
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    for name in ("", service_name):
        await status.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    logger.info("%s worker listening on %s, loading models", task, address)
    services = await asyncio.to_thread(load_services, task, settings)
    register(make_servicer(services), server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(services), server)
    for name in ("", service_name):
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
    for service in services.values():
        service.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve one task's models over gRPC.")
    parser.add_argument("--task", required=True, choices=TASKS, help="which models of models.toml to serve")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {args.task} %(name)s: %(message)s",
    )
    asyncio.run(serve(args.task, args.host, args.port, settings))


if __name__ == "__main__":
    main()
