"""Running the app on uvicorn: binding first, graceful shutdown on SIGINT/SIGTERM, exit status 0.

Order of shutdown: a signal stops new connections (uvicorn) and new requests
(503); running requests get ``shutdown_timeout`` seconds to finish, then they
are aborted and their streams end with an error event; then the lifespan
shutdown stops the engine thread and :func:`run_server` returns normally.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import uvicorn

from rusteeze.errors import RusteezeError
from rusteeze.server.app import ServerApp

log = logging.getLogger("rusteeze.server")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServerStartError(RusteezeError, OSError):
    """The server cannot start: the address is in use, or not available on this machine."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        ServerStartError: the port is in use or the address cannot be bound, in one line.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle's algorithm off only on accepted sockets whose
    # proto is IPPROTO_TCP; with proto 0 every response's body (and every SSE event) waited
    # for the ACK of the previous write, 40 ms with delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServerStartError(f"port {port} on {host} is already in use; pick another with --port") from None
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when a shutdown starts and exiting 0 after a signal."""

    def __init__(self, config: uvicorn.Config, app: ServerApp) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: object) -> None:
        self.app.state.begin_shutdown()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after a graceful shutdown (the process then dies
        # of it); we restore the handlers and return, so `rusteeze serve` exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def make_server(app: ServerApp, sock: socket.socket, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` on the bound ``sock`` (call ``.run(sockets=[sock])``).

    A failed model load stops the server; :func:`run_server` then raises it.
    """
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,  # the app logs one line per request
        log_level=log_level,
        timeout_graceful_shutdown=app.state.settings.shutdown_timeout + 5,
    )
    server = _Server(config, app)

    def stop(error: BaseException) -> None:
        server.should_exit = True

    app.state.on_load_error = stop
    return server


def run_server(app: ServerApp, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully and return.

    Raises:
        BaseException: the model's load error, when loading failed (the server stopped).
    """
    _ensure_log_handler()
    server = make_server(app, sock, log_level)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    log.info("serving %s on %s (Ctrl-C to stop); the model loads now", app.state.model_name, url)
    if app.state.settings.web_ui:
        log.info("chat in a browser: %s/", url)
    server.run(sockets=[sock])
    if app.state.load_error is not None:
        raise app.state.load_error


def _ensure_log_handler() -> None:
    # The engine logs its thread's death (with the traceback) to "rusteeze.engine": same format.
    for logger in (log, logging.getLogger("rusteeze.engine")):
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
