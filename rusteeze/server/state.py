"""ServerState: the engine (loaded in the background), settings, metrics and the in-flight requests."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rusteeze.engine.async_engine import AsyncEngine
from rusteeze.server.http import APIError
from rusteeze.server.metrics import ServerMetrics
from rusteeze.server.settings import ServerSettings

log = logging.getLogger("rusteeze.server")

EngineFactory = Callable[[], Any]  # () -> rusteeze.engine.engine.Engine
T = TypeVar("T")


class ServerState:
    """Everything the request handlers share.

    The engine loads in a thread started by the lifespan startup, so the
    server answers ``/health`` (503, then 200) while the weights load. Chat
    templates, tokenizing and large JSON bodies run on a small thread pool
    (:meth:`run_blocking`), never on the event loop.

    Args:
        settings: the server settings.
        engine_factory: builds the Engine (called once, in the loading thread).
        model_names: the ids (aliases) ``/v1/models`` lists and requests may name; a
            string is one id. The first is ``model_name``, reported when a request
            names none.
        on_load_error: called (from the loading thread) when loading fails,
            e.g. to stop the server.
    """

    def __init__(
        self,
        settings: ServerSettings,
        engine_factory: EngineFactory,
        model_names: str | Sequence[str],
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        self.model_names: tuple[str, ...] = (model_names,) if isinstance(model_names, str) else tuple(model_names)
        assert self.model_names, "a server serves its model under at least one name"
        self.model_name = self.model_names[0]
        self.on_load_error = on_load_error
        self.metrics = ServerMetrics()
        self.engine: Any = None
        self.aengine: AsyncEngine | None = None
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self.num_waiting = 0  # admitted engine requests without a first output yet
        self.num_preparing = 0  # engine requests being validated (chat template, tokenizing)
        self.inflight: set[str] = set()  # engine request ids being generated
        self.shutting_down = False
        self._loader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- loading --------------------------------------------------------------

    def start_loading(self) -> None:
        """Start loading the engine in a thread (lifespan startup)."""
        self._loop = asyncio.get_running_loop()
        self._loader = threading.Thread(target=self._load, name="rusteeze-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            engine = self.engine_factory()
            aengine = AsyncEngine(engine)
        except BaseException as e:  # report any failure, then let the thread end
            self.load_error = e
            log.error("model failed to load: %s", e)
            if self.on_load_error is not None:
                self.on_load_error(e)
            return
        self.metrics.attach(engine.stats)
        self.engine, self.aengine = engine, aengine
        log.info("model %s loaded in %.1f s; ready", self.model_name, time.perf_counter() - start)

    @property
    def ready(self) -> bool:
        """True once the engine is loaded and running."""
        return self.aengine is not None and self.aengine.is_running

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the server's worker threads (tokenizing, templates) and return its result."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="rusteeze-tokenize")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def require_engine(self) -> AsyncEngine:
        """The running engine.

        Raises:
            APIError: 503 while loading, after a failed load, when the engine thread died
                (with the cause), or while shutting down.
        """
        if self.shutting_down:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self.load_error is not None:
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")
        if self.aengine is not None and self.aengine.is_dead:
            raise APIError(503, f"the engine is not running: {self.aengine.error}", code="engine_dead")
        if not self.ready:
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading")
        assert self.aengine is not None
        return self.aengine

    def check_model(self, name: str | None) -> None:
        """Accept ``name`` when it is None or one of the served model's names.

        Responses then report the name the request used, or ``model_name`` when it
        named none (vLLM's rule).

        Raises:
            APIError: 404 naming the model ids that are served.
        """
        if name is not None and name not in self.model_names:
            served = " or ".join(repr(n) for n in self.model_names)
            message = f"model {name!r} does not exist; this server serves {served}"
            raise APIError(404, message, "model", "model_not_found")

    # -- shutdown ---------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """SIGINT/SIGTERM arrived: refuse new requests; abort what still runs after the grace period.

        Safe to call from a signal handler on the event loop's thread or from any other thread.
        """
        if self.shutting_down:
            return
        self.shutting_down = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, self.settings.shutdown_timeout, self.abort_all)

    def abort_all(self) -> None:
        """Abort every in-flight request: streams end with an error event, others with a 503."""
        if self.aengine is None or not self.inflight:
            return
        log.warning("aborting %d request(s) still running after the shutdown grace period", len(self.inflight))
        for rid in list(self.inflight):
            self.aengine.abort(rid)

    def close(self) -> None:
        """Stop the engine thread (lifespan shutdown)."""
        self.shutting_down = True
        if self.aengine is not None:
            self.aengine.shutdown()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
