"""A tiny OpenAI-compatible streaming server for tests, on 127.0.0.1 (uvicorn in a thread).

It answers `GET /v1/models` and streaming `POST /v1/completions` with one chunk per
"token" (`max_tokens` of them, each the word "tok "), then a usage chunk when asked for,
then `[DONE]`. It records every request body and the most requests it had in flight.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import uvicorn


class FakeOpenAIServer:
    """Use as a context manager; ``url`` is its root.

    Args:
        model: the id `/v1/models` lists.
        send_usage: answer `stream_options.include_usage` with a usage chunk.
        status: answer every completion with this HTTP status (200: stream).
        api_key: require `Authorization: Bearer api_key`.
    """

    def __init__(
        self, model: str = "fake-model", send_usage: bool = True, status: int = 200, api_key: str = ""
    ) -> None:
        self.model, self.send_usage, self.status, self.api_key = model, send_usage, status, api_key
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", lifespan="off", interface="asgi3"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        if self.api_key and headers.get(b"authorization") != f"Bearer {self.api_key}".encode():
            return await _json(send, 401, {"error": {"message": "invalid api key", "type": "auth", "code": 401}})
        if scope["method"] == "GET" and scope["path"] == "/v1/models":
            return await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if scope["method"] != "POST" or scope["path"] != "/v1/completions":
            return await _json(send, 404, {"error": {"message": "not found"}})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        self.bodies.append(request)
        if self.status != 200:
            return await _json(send, self.status, {"error": {"message": f"refused with {self.status}"}})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._stream(send, request)
        finally:
            self.in_flight -= 1

    async def _stream(self, send, request: dict) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        n = request["max_tokens"]
        for _ in range(n):
            await asyncio.sleep(0.001)  # let other requests interleave, as a batching server does
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": "tok ", "finish_reason": None}]}
            await _event(send, chunk)
        if self.send_usage and (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": len(request["prompt"].split()), "completion_tokens": n}
            await _event(send, {"object": "text_completion", "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _event(send, obj: dict) -> None:
    await send({"type": "http.response.body", "body": f"data: {json.dumps(obj)}\n\n".encode(), "more_body": True})


async def _json(send, status: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
