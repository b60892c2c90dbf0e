"""ASGI 3 types: one TypedDict per message the server sends or receives (as uvicorn speaks them).

Only what rusteeze uses is spelled out; the ASGI spec is the reference
(https://asgi.readthedocs.io/en/latest/specs/www.html and lifespan.html).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypedDict


class HTTPScope(TypedDict):
    """The connection scope of one HTTP request (the fields the server reads)."""

    type: Literal["http"]
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None


class LifespanScope(TypedDict):
    """The scope of the lifespan protocol (startup and shutdown of the application)."""

    type: Literal["lifespan"]


class HTTPRequestEvent(TypedDict):
    """A piece of the request body; ``more_body`` is False on the last one."""

    type: Literal["http.request"]
    body: bytes
    more_body: bool


class HTTPDisconnectEvent(TypedDict):
    """The client went away (received at any time, body or not)."""

    type: Literal["http.disconnect"]


class HTTPResponseStartEvent(TypedDict):
    """Status line and headers; sent once, before any body."""

    type: Literal["http.response.start"]
    status: int
    headers: list[tuple[bytes, bytes]]


class HTTPResponseBodyEvent(TypedDict):
    """A piece of the response body; ``more_body=False`` ends the response."""

    type: Literal["http.response.body"]
    body: bytes
    more_body: bool


class LifespanStartupEvent(TypedDict):
    """The server is starting: load what the application needs."""

    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    """The server is stopping: release everything."""

    type: Literal["lifespan.shutdown"]


class LifespanCompleteEvent(TypedDict):
    """Our answer to startup / shutdown: ``lifespan.startup.complete`` or ``lifespan.shutdown.complete``."""

    type: Literal["lifespan.startup.complete", "lifespan.shutdown.complete"]


class LifespanFailedEvent(TypedDict):
    """Our answer when startup / shutdown failed (the server then exits)."""

    type: Literal["lifespan.startup.failed", "lifespan.shutdown.failed"]
    message: str


ReceiveEvent = HTTPRequestEvent | HTTPDisconnectEvent | LifespanStartupEvent | LifespanShutdownEvent
SendEvent = HTTPResponseStartEvent | HTTPResponseBodyEvent | LifespanCompleteEvent | LifespanFailedEvent
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[ReceiveEvent]]
Send = Callable[[SendEvent], Awaitable[None]]
