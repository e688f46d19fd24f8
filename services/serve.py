"""``python -m services.serve``: the gateway with every service in-process (embedded mode)."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.app import create_app
from services.model_config import load_model_specs
from services.registry import ModelRegistry, create_service, remote_collections
from services.settings import Settings


def build_registry(settings: Settings) -> ModelRegistry:
    specs = load_model_specs(settings.models_config)
    remote = (lambda: remote_collections(settings)) if "retrieval" in settings.endpoints else None
    return ModelRegistry(specs, lambda spec: create_service(spec, settings), settings.data_dir, remote)


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(build_registry(settings), max_body_bytes=settings.max_upload_bytes)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
