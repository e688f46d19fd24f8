"""``python -m services.commands.serve``: the gateway with every service in-process (embedded mode)."""

from __future__ import annotations

import uvicorn

from services.config.models import configured_models
from services.config.settings import Settings
from services.gateway.app import create_app
from services.gateway.auth import ApiKeys
from services.gateway.deadline import DeadlinePolicy
from services.gateway.lifecycle import DrainingServer, Lifecycle
from services.observability.log_config import configure_logging
from services.registry import ModelRegistry, create_service, remote_collections, remote_vector_stores


def build_registry(settings: Settings) -> ModelRegistry:
    specs = configured_models(settings)
    remote = "retrieval" in settings.endpoints
    return ModelRegistry(
        specs,
        lambda spec: create_service(spec, settings),
        settings.data_dir,
        (lambda: remote_collections(settings)) if remote else None,
        (lambda: remote_vector_stores(settings)) if remote else None,
    )


def run(settings: Settings) -> None:
    """Serve every configured model in this process until SIGTERM or Ctrl-C (``mmserve serve`` too)."""
    configure_logging(settings.log_level, settings.log_format)
    lifecycle = Lifecycle()
    app = create_app(
        build_registry(settings),
        max_body_bytes=settings.max_upload_bytes,
        api_keys=ApiKeys(settings.api_keys, settings.metrics_require_key),
        deadlines=DeadlinePolicy(settings.request_timeout_s, settings.max_request_timeout_s),
        lifecycle=lifecycle,
        cors_origins=settings.cors_origins,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Our handler and our access log (services/gateway/request_log.py: with request ids) instead.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, lifecycle, settings.shutdown_grace_s).run()


def main() -> None:
    run(Settings.from_env())


if __name__ == "__main__":
    main()
