"""The browser playground: ``GET /`` serves one HTML page, ``/static/*`` its script and stylesheet.

Plain HTML, CSS and JavaScript that live in ``services/gateway/static`` (package data): no framework, no
build step, and nothing fetched from outside the gateway — the page's Content-Security-Policy lets it
talk only to its own origin (plus the ``blob:`` URLs it makes for uploaded images and synthesised audio).
None of these routes appear in the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_HTML = STATIC_DIR / "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

# Revalidate on every load (cheap: ETag/Last-Modified), so an upgraded server never runs a stale script.
_REVALIDATE = CacheControlHeader(no_cache=True)


@get("/", include_in_schema=False, cache_control=_REVALIDATE, sync_to_thread=False)
def index() -> File:
    """The playground page."""
    return File(
        INDEX_HTML,
        filename=INDEX_HTML.name,
        media_type=MediaType.HTML,
        content_disposition_type="inline",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"},
    )


playground_router = Router(
    path="/",
    route_handlers=[
        index,
        create_static_files_router(
            path="/static",
            directories=[STATIC_DIR],
            name="playground-static",
            cache_control=_REVALIDATE,
            include_in_schema=False,
        ),
    ],
    include_in_schema=False,
)
