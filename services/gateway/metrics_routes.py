"""GET /metrics: every Prometheus metric of this process, in the text exposition format."""

from __future__ import annotations

from litestar import Controller, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class MetricsController(Controller):
    tags = ["health"]

    @get("/metrics", summary="Prometheus metrics", include_in_schema=False, sync_to_thread=False)
    def metrics(self) -> Response[bytes]:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
