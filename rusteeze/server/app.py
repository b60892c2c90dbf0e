"""The ASGI application: lifespan, routing, auth, CORS, errors and one log line per request."""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Callable, Sequence

from rusteeze.server import endpoints, web_ui
from rusteeze.server.asgi import HTTPScope, Receive, Scope, Send
from rusteeze.server.chat import create_chat_completion
from rusteeze.server.completions import create_completion
from rusteeze.server.http import APIError, HTTPRequest, Response
from rusteeze.server.router import Router
from rusteeze.server.settings import ServerSettings
from rusteeze.server.sse import ClientDisconnected, StreamingResponse
from rusteeze.server.state import EngineFactory, ServerState

log = logging.getLogger("rusteeze.server")

_ROUTES = (
    ("GET", "/v1/models", endpoints.list_models),
    ("POST", "/v1/completions", create_completion),
    ("POST", "/v1/chat/completions", create_chat_completion),
    ("POST", "/tokenize", endpoints.tokenize),
    ("POST", "/detokenize", endpoints.detokenize),
    ("GET", "/health", endpoints.health),
    ("GET", "/version", endpoints.version),
    ("GET", "/metrics", endpoints.metrics),
)


class ServerApp:
    """The OpenAI-compatible server as a raw ASGI 3 application.

    Args:
        state: the shared server state (engine, settings, metrics).
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.router = Router()
        for method, path, handler in _ROUTES:
            self.router.add(method, path, functools.partial(handler, state))
        if state.settings.web_ui:
            for path in web_ui.PAGES:
                self.router.add("GET", path, web_ui.serve_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point (``lifespan`` and ``http`` scopes; others are ignored)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.state.start_loading()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        request = HTTPRequest(scope, receive)
        cors = [] if web_ui.serves(request.path) else self._cors_headers(request)  # the page is same-origin
        try:
            if request.method == "OPTIONS" and self.state.settings.allowed_origins:
                response = self._preflight(request, cors)
            else:
                self._authorize(request)
                handler = self.router.match(request.method, request.path)
                response = await handler(request)
        except APIError as e:
            response = Response.error(e)
        except ClientDisconnected:
            self._log(request, 499, start)
            return
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = Response.error(APIError(500, "internal server error", type="server_error"))
        try:
            await response.send(send, cors, receive)
        except Exception:  # a bug while streaming: the headers are gone, nothing more can be said
            log.exception("unexpected error while sending %s %s", request.method, request.path)
        status = 499 if isinstance(response, StreamingResponse) and response.disconnected else response.status
        self._log(request, status, start)

    def _authorize(self, request: HTTPRequest) -> None:
        key = self.state.settings.api_key
        if key is None or not (request.path == "/v1" or request.path.startswith("/v1/")):
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)", code="invalid_api_key")

    def _cors_headers(self, request: HTTPRequest) -> list[tuple[str, str]]:
        allowed = self.state.settings.allowed_origins
        origin = request.headers.get("origin")
        if not allowed or origin is None:
            return []
        if "*" in allowed:
            return [("access-control-allow-origin", "*")]
        if origin in allowed:
            return [("access-control-allow-origin", origin), ("vary", "Origin")]
        return []

    def _preflight(self, request: HTTPRequest, cors: list[tuple[str, str]]) -> Response:
        if not cors:
            return Response.error(APIError(400, "this origin is not allowed (CORS)", code="cors_origin_not_allowed"))
        headers = request.headers.get("access-control-request-headers", "authorization, content-type")
        return Response(
            204,
            b"",
            content_type="text/plain",
            headers=[
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", headers),
                ("access-control-max-age", "600"),
            ],
        )

    @staticmethod
    def _log(request: HTTPRequest, status: int, start: float) -> None:
        tokens = ""
        if request.log_usage is not None:
            tokens = f" prompt_tokens={request.log_usage[0]} completion_tokens={request.log_usage[1]}"
        log.info("%s %s %d%s %.3fs", request.method, request.path, status, tokens, time.perf_counter() - start)


def create_app(
    settings: ServerSettings,
    engine_factory: EngineFactory,
    model_names: str | Sequence[str],
    on_load_error: Callable[[BaseException], None] | None = None,
) -> ServerApp:
    """Build the ASGI app; the engine is built by ``engine_factory`` when the server starts.

    Args:
        settings: server settings (auth, CORS, limits).
        engine_factory: returns a loaded ``Engine``; called once in a loading thread.
        model_names: the model ids (aliases) clients may name in requests; the first is the default.
        on_load_error: called when ``engine_factory`` raises (e.g. to stop the server).
    """
    return ServerApp(ServerState(settings, engine_factory, model_names, on_load_error))
