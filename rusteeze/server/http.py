"""HTTP plumbing on raw ASGI: the request wrapper, JSON responses and OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from rusteeze.server.asgi import HTTPScope, Receive, Send

JSON = "application/json"
MAX_JSON_DEPTH = 64  # arrays and objects nested deeper than this are a 400 (OpenAI bodies need < 10)
_THREAD_PARSE_BYTES = 64 * 1024  # bodies larger than this are parsed off the event loop
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: the HTTP status (400, 401, 404, 405, 413, 500, 503).
        message: what went wrong, for a person.
        param: the request field at fault, when there is one.
        code: a short machine-readable code (e.g. "model_not_found"); defaults to None.
        type: OpenAI's error type; derived from ``status`` when None.
    """

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    """A 400 naming the offending field."""
    return APIError(400, message, param=param)


class HTTPRequest:
    """One HTTP request: method, path, headers and a size-limited body.

    Args:
        scope: the ASGI HTTP scope.
        receive: the ASGI receive callable (the body, then ``http.disconnect``).
    """

    def __init__(self, scope: HTTPScope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[str, str] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.body_read = False
        self.log_usage: tuple[int, int] | None = None  # (prompt, completion) tokens, for the access log

    async def body(self, limit: int) -> bytes:
        """Read the whole body.

        Raises:
            APIError: 413 when it is (or announces itself as) longer than ``limit`` bytes.
        """
        too_big = APIError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        while True:
            event = await self.receive()
            if event["type"] != "http.request":  # the client left before sending everything
                raise APIError(400, "the client disconnected before sending the body", code="client_disconnected")
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not event.get("more_body", False):
                break
        self.body_read = True
        return b"".join(chunks)

    async def json(self, limit: int) -> dict[str, Any]:
        """The body parsed as a JSON object (see :func:`parse_json`); large bodies are parsed in a thread.

        Raises:
            APIError: 400 when the body is not JSON, not an object, or outside :func:`parse_json`'s
                bounds; 413 when too big.
        """
        raw = await self.body(limit)
        if len(raw) > _THREAD_PARSE_BYTES:
            return await asyncio.to_thread(parse_json, raw)
        return parse_json(raw)


def _constant(name: str) -> Any:
    raise bad_request(f"the request body is not valid JSON: {name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise bad_request(f"the request body is not valid JSON: the number {text[:40]} is too large")
    return value


def _int(text: str) -> int:
    # Every integer of the API fits in 64 bits; refusing longer ones here keeps huge values
    # (and Python's 4300-digit conversion limit) away from every later check.
    if len(text) > 21 or not -(2**63) <= (value := int(text)) < 2**64:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise bad_request(f"the request body holds the integer {shown}, which does not fit in 64 bits")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    """Parse a request body: a JSON object, at most ``MAX_JSON_DEPTH`` levels deep.

    ``NaN`` and ``Infinity`` (which Python's json accepts) are refused, as are numbers that
    overflow a float and integers beyond 64 bits, so every value later code sees is finite.

    Raises:
        APIError: 400 naming what is wrong.
    """
    try:
        data = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # e.g. a number the parser cannot convert
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    _check_depth(data)
    return data


def _check_depth(data: Any) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (non-ASCII kept as UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Response:
    """A complete (non-streaming) response.

    Args:
        status: HTTP status.
        body: the bytes to send.
        content_type: the Content-Type header.
        headers: more headers.
    """

    def __init__(
        self, status: int, body: bytes, content_type: str = JSON, headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [("content-type", content_type), *(headers or [])]

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        """A JSON response."""
        return cls(status, dumps(obj))

    @classmethod
    def error(cls, error: APIError) -> Response:
        """The OpenAI-shaped error response of ``error``."""
        return cls(error.status, dumps(error.body()))

    async def send(self, send: Send, extra_headers: list[tuple[str, str]], receive: Receive | None = None) -> None:
        """Send the status, the headers (plus ``extra_headers``) and the body (``receive`` is unused)."""
        headers = [*self.headers, *extra_headers, ("content-length", str(len(self.body)))]
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})
