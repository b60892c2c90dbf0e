"""Server-sent events: a streaming response that listens for ``http.disconnect`` while it sends.

Invariant: a stream never outlives its client. Sending and listening run as
two tasks; when the client disconnects first, the sending task is cancelled,
the cancellation reaches the event generator (and through it the engine's
``generate`` loop), and the engine aborts the request, freeing its KV blocks
before its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.server.asgi import Receive, Send
from rusteeze.server.http import dumps

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One ``data: {json}`` event."""
    return b"data: " + dumps(obj) + b"\n\n"


class StreamingResponse:
    """A 200 ``text/event-stream`` response whose body comes from an async iterator of events.

    Args:
        events: the encoded events (see :func:`sse`); the iterator is closed
            when the client disconnects.

    Attributes:
        disconnected: True when the client went away before the last event.
    """

    status = 200

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events = events
        self.disconnected = False

    async def send(self, send: Send, extra_headers: list[tuple[str, str]], receive: Receive) -> None:
        """Send the headers, then every event as it comes, until the end or a disconnect."""
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
            *extra_headers,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        producer = asyncio.ensure_future(self._produce(send))
        listener = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({producer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, listener):
                task.cancel()
            # Wait for the producer's cancellation, so the request is aborted before we return.
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self.disconnected = not (producer.done() and not producer.cancelled())

    async def _produce(self, send: Send) -> None:
        try:
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def cancel_on_disconnect(receive: Receive, work: Any) -> Any:
    """Await ``work`` (a coroutine), cancelling it if the client disconnects first.

    Call it after the request body has been read. Cancelling the work aborts
    its engine requests, as for a stream.

    Raises:
        ClientDisconnected: the client left first.
    """
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        listener.cancel()
        raise
    listener.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected()
    return task.result()
