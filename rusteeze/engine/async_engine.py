"""AsyncEngine: the engine loop in a background thread, one asyncio queue per request.

Threading invariant: only the engine thread touches the Engine's mutable
state (scheduler, blocks, requests). Other threads hand it work through
``_adds`` / ``_aborts`` under ``_lock`` and wake it with ``_wake``; it picks
the work up between steps, so an abort frees the request's blocks before the
next step starts (never in the middle of one that is reading them). Outputs
travel back with ``loop.call_soon_threadsafe`` into each request's queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.engine import Engine, EngineStepError
from rusteeze.engine.outputs import RequestOutput
from rusteeze.engine.request import Request
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams

_Channel = tuple[asyncio.AbstractEventLoop, asyncio.Queue]


class AsyncEngine:
    """Serves many concurrent asyncio callers from one engine thread.

    Args:
        engine: the engine to drive (it must not be stepped by anyone else).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._adds: list[Request] = []
        self._aborts: list[str] = []
        self._channels: dict[str, _Channel] = {}
        self._stop = False
        self.num_step_errors = 0
        self._thread = threading.Thread(target=self._loop, name="rusteeze-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        """True while the engine thread is alive."""
        return self._thread.is_alive()

    async def generate(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[RequestOutput]:
        """Run one request, yielding a RequestOutput after every step that changes it.

        The last output has ``finished=True``. Leaving the loop early (break,
        cancellation, client disconnect) aborts the request and frees its blocks.

        Args:
            prompt, params, request_id, **kwargs: as ``Engine.make_request``
                (``messages=`` for chat).

        Raises:
            InvalidRequestError: at once, for a bad request.
            EngineStepError: when a step computing this request failed.
        """
        request = self.engine.make_request(prompt, params, request_id, **kwargs)
        async for out in self.run(request):
            yield out

    async def run(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Run a request already made by ``Engine.make_request``; outputs as :meth:`generate`.

        For callers that validate (tokenize) before committing to run, so the
        prompt is tokenized once. A request object runs at most once.

        Raises:
            InvalidRequestError: when the request id is already running.
            EngineStepError: when a step computing this request failed.
        """
        if self._stop:
            raise RuntimeError("the engine has been shut down")
        rid = request.request_id
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if rid in self._channels:
                raise InvalidRequestError(f"request id {rid!r} is already in use", param="request_id")
            self._channels[rid] = (asyncio.get_running_loop(), queue)
            self._adds.append(request)
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._lock:
                self._channels.pop(rid, None)
                if not finished:
                    self._aborts.append(rid)
            self._wake.set()

    def abort(self, request_id: str) -> None:
        """Ask the engine thread to abort a request (its final output, if anyone waits, says "abort")."""
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread after its current step; pending requests get an error."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    # -- engine thread ----------------------------------------------------------

    def _send(self, request_id: str, item: RequestOutput | BaseException) -> None:
        with self._lock:
            channel = self._channels.get(request_id)
        if channel is None:
            return
        loop, queue = channel
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening
            self.engine.abort(request_id)

    def _take_work(self) -> tuple[list[Request], list[str]]:
        with self._lock:
            adds, aborts = self._adds, self._aborts
            self._adds, self._aborts = [], []
        return adds, aborts

    def _loop(self) -> None:
        while not self._stop:
            self._wake.clear()
            adds, aborts = self._take_work()
            for request in adds:
                try:
                    self.engine.add(request)
                except Exception as e:  # e.g. a duplicate id raced in: only this request fails
                    self._send(request.request_id, e)
            for rid in aborts:
                out = self.engine.abort(rid)
                if out is not None:
                    self._send(rid, out)
            if not self.engine.has_unfinished_requests():
                self._wake.wait()
                continue
            try:
                outputs = self.engine.step()
            except EngineStepError as e:
                self.num_step_errors += 1
                for rid in e.request_ids:
                    self._send(rid, e)
                continue
            except Exception as e:  # outside the forward pass: fail everything, keep serving
                self.num_step_errors += 1
                rids = list(self.engine.requests)
                error = EngineStepError(rids, e)
                error.__cause__ = e
                for rid in rids:
                    self.engine.abort(rid)
                    self._send(rid, error)
                continue
            for out in outputs:
                self._send(out.request_id, out)
        error = RuntimeError("the engine has been shut down")
        adds, _ = self._take_work()
        for rid in [*self.engine.requests, *(r.request_id for r in adds)]:
            self.engine.abort(rid)
            self._send(rid, error)
