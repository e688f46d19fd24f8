"""GET /metrics: every Prometheus metric of this process, in the text exposition format."""

from __future__ import annotations

from litestar import Controller, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

# Litestar adds "; charset=utf-8" to a text/* media type itself, even to one that names it already: a
# repeated parameter that strict parsers (Go's, so Prometheus's) refuse.
_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


class MetricsController(Controller):
    tags = ["health"]

    @get("/metrics", summary="Prometheus metrics", include_in_schema=False, sync_to_thread=False)
    def metrics(self) -> Response[bytes]:
        return Response(generate_latest(REGISTRY), media_type=_MEDIA_TYPE)
