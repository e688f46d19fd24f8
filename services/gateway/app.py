"""The gateway application: routes, dependencies, error mapping, OpenAPI."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from services.gateway.errors import exception_handler
from services.gateway.media_routes import AudioController, VisionController
from services.gateway.request_log import request_log_middleware
from services.gateway.retrieval_routes import CollectionsController, RagController, RetrievalController
from services.gateway.routes import HealthController, OpenAIController
from services.registry import ModelRegistry


def create_app(
    registry: ModelRegistry, load_in_background: bool = True, max_body_bytes: int = 25 << 20
) -> Litestar:
    def on_startup() -> None:
        if load_in_background:
            registry.start_loading()

    def on_shutdown() -> None:
        registry.shutdown()

    return Litestar(
        route_handlers=[
            HealthController,
            OpenAIController,
            CollectionsController,
            RetrievalController,
            RagController,
            VisionController,
            AudioController,
        ],
        dependencies={"registry": Provide(lambda: registry, sync_to_thread=False)},
        exception_handlers={Exception: exception_handler},
        middleware=[request_log_middleware],
        # Logging is configured once by the process (services.serve); Litestar must not replace it.
        logging_config=None,
        request_max_body_size=max_body_bytes,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(
            title="mmserve",
            version="0.1.0",
            description="OpenAI-compatible multimodal inference service.",
        ),
    )
