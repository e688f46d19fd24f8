"""Server-sent events in the shape OpenAI's clients parse: ``data: <json>\\n\\n`` … ``data: [DONE]``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream

from services.gateway.errors import error_body
from services.gateway.schemas import to_json

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(payload: Any) -> bytes:
    return b"data: " + to_json(payload) + b"\n\n"


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once the stream has started the status is sent: a failure becomes an error event."""
    try:
        async for chunk in events:
            yield chunk
    except Exception as exc:
        status, body = error_body(exc)
        logger.log(logging.ERROR if status >= 500 else logging.INFO, "stream failed: %s", exc)
        yield event(body)
    yield DONE


class EventStream(Stream):
    """A Stream that keeps its own media type: Litestar otherwise lets the route's default (JSON) win."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse_response(events: AsyncIterator[bytes]) -> Stream:
    return EventStream(
        _guarded(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
