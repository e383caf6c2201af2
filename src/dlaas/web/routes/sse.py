"""Server-Sent Events: the wire format and the streaming response around it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi.responses import StreamingResponse


def sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Stream ``events`` unbuffered: no cache, and no proxy buffering (nginx)."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class EventStreamResponse(StreamingResponse):
    """For ``response_class=``: the schema then says ``text/event-stream``, as sent."""

    media_type = "text/event-stream"


# For ``responses=``: each event of the stream, as the OpenAPI schema describes it.
EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events; each ``data`` is one JSON object",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                }
            }
        },
    }
}
