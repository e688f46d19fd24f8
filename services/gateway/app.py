"""The gateway application: routes, dependencies, error mapping, OpenAPI."""

from __future__ import annotations

import asyncio

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from services.gateway.auth import ApiKeys, api_key_guard
from services.gateway.deadline import DeadlinePolicy, deadline_middleware, timeout_header_guard
from services.gateway.disconnect import cancel_on_disconnect
from services.gateway.errors import exception_handler
from services.gateway.files_routes import FilesController
from services.gateway.http_metrics import count_unrouted, http_metrics_middleware
from services.gateway.lifecycle import Lifecycle
from services.gateway.media_routes import AudioController, VisionController
from services.gateway.metrics_routes import MetricsController
from services.gateway.playground import playground_router
from services.gateway.request_log import log_unrouted, request_log_middleware
from services.gateway.rerank_routes import RerankController
from services.gateway.retrieval_routes import CollectionsController, RagController, RetrievalController
from services.gateway.routes import HealthController, OpenAIController, TokenizerController
from services.gateway.vector_store_routes import VectorStoresController
from services.registry import ModelRegistry

BEARER = SecurityScheme(type="http", scheme="bearer", description="one of MMSERVE_API_KEYS")


# Response headers a browser page may read across origins (its own request id, timings, audio's rate).
EXPOSED = ["x-request-id", "x-total-time", "x-queue-time", "x-inference-time", "x-sample-rate", "retry-after"]


def create_app(
    registry: ModelRegistry,
    load_in_background: bool = True,
    max_body_bytes: int = 25 << 20,
    api_keys: ApiKeys = ApiKeys(),  # noqa: B008  (frozen, so one shared default is safe)
    deadlines: DeadlinePolicy = DeadlinePolicy(),  # noqa: B008
    lifecycle: Lifecycle | None = None,
    cors_origins: tuple[str, ...] = (),
) -> Litestar:
    lifecycle = lifecycle or Lifecycle()

    background: set[asyncio.Task[None]] = set()

    def on_startup() -> None:
        if load_in_background:
            registry.start_loading()
            resuming = asyncio.get_running_loop().create_task(registry.resume_file_processing())
            background.add(resuming)
            resuming.add_done_callback(background.discard)

    def on_shutdown() -> None:
        for task in background:
            task.cancel()
        registry.shutdown()

    return Litestar(
        route_handlers=[
            HealthController,
            # Behind the API keys (api_key_guard); the schema says so of these alone.
            Router(
                "/",
                route_handlers=[
                    OpenAIController,
                    TokenizerController,
                    CollectionsController,
                    RetrievalController,
                    RagController,
                    RerankController,
                    FilesController,
                    VectorStoresController,
                    VisionController,
                    AudioController,
                ],
                security=[{"bearer": []}] if api_keys.keys else None,
            ),
            playground_router,
            MetricsController,
        ],
        dependencies={
            "registry": Provide(lambda: registry, sync_to_thread=False),
            "lifecycle": Provide(lambda: lifecycle, sync_to_thread=False),
        },
        exception_handlers={Exception: exception_handler},
        middleware=[
            request_log_middleware,
            http_metrics_middleware,
            lifecycle.middleware,
            deadline_middleware(deadlines),
            cancel_on_disconnect,
        ],
        before_send=[count_unrouted, log_unrouted],
        guards=[api_key_guard(api_keys), timeout_header_guard(deadlines)],
        # Browsers ask first (a preflight OPTIONS, which carries no key), then send the key themselves.
        cors_config=CORSConfig(
            allow_origins=list(cors_origins), allow_methods=["*"], allow_headers=["*"], expose_headers=EXPOSED
        )
        if cors_origins
        else None,
        # Logging is configured once by the process (services.commands.serve); Litestar must not replace it.
        logging_config=None,
        request_max_body_size=max_body_bytes,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(
            title="mmserve",
            version="0.1.0",
            description="OpenAI-compatible multimodal inference service.",
            components=Components(security_schemes={"bearer": BEARER} if api_keys.keys else None),
        ),
    )
