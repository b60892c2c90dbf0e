"""AsyncEngine: the engine loop in a background thread, one output slot per request.

Threading invariant: only the engine thread touches the Engine's mutable
state (scheduler, blocks, requests). Other threads hand it work through
``_adds`` / ``_aborts`` under ``_lock`` and wake it with ``_wake``; it picks
the work up between steps, so an abort frees the request's blocks before the
next step starts (never in the middle of one that is reading them).

Outputs travel back through one :class:`_Stream` per request: the engine thread
merges each step's output (deltas only, see ``Request.output_deltas``) into the
stream's single pending slot and wakes the reader's event loop at most once
until the reader takes it. A reader that falls behind (a slow SSE client) thus
costs the tokens it has not read yet, never one queued object per step.

If the engine thread dies, every waiting and later caller gets an
:class:`EngineDeadError` naming the cause (logged once with its traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.engine import Engine, EngineStepError
from rusteeze.engine.outputs import CompletionOutput, RequestOutput
from rusteeze.engine.request import Request
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams

log = logging.getLogger("rusteeze.engine")


class EngineShutdownError(RuntimeError):
    """The engine was shut down (``AsyncEngine.shutdown``) before the request finished."""


class EngineDeadError(RuntimeError):
    """The engine thread died; no request can run any more. The cause is ``__cause__``."""


class _Pending:
    """The outputs of one request that its reader has not taken yet, merged into one."""

    def __init__(self, out: RequestOutput) -> None:
        self.last = out
        self.parts = [[c.delta_text] for c in out.outputs]
        self.ids = [list(c.delta_token_ids) for c in out.outputs]
        self.lps = [None if c.delta_logprobs is None else list(c.delta_logprobs) for c in out.outputs]
        self.num_steps = 1

    def add(self, out: RequestOutput) -> None:
        for i, c in enumerate(out.outputs):
            if c.delta_text:
                self.parts[i].append(c.delta_text)
            self.ids[i] += c.delta_token_ids
            if c.delta_logprobs is not None:
                self.lps[i] += c.delta_logprobs
        self.last = out
        self.num_steps += 1


class _Stream:
    """One request's way from the engine thread to its reader: one pending (merged) output at most.

    Args:
        loop: the reader's event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: _Pending | None = None
        self._error: BaseException | None = None
        self._notified = False  # a wake-up is scheduled on the reader's loop
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        """Items waiting for the reader (at most 2: the merged output and an error)."""
        return (self._pending is not None) + (self._error is not None)

    def put(self, item: RequestOutput | BaseException) -> bool:
        """Merge an output (or set the error) and wake the reader; False when its loop is closed."""
        with self._lock:
            if isinstance(item, BaseException):
                self._error = self._error or item
            elif self._pending is None:
                self._pending = _Pending(item)
            else:
                self._pending.add(item)
            if self._notified:
                return True
            self._notified = True
        try:
            self.loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the reader's event loop is closed: nobody is listening
            return False
        return True

    async def get(self) -> _Pending:
        """The merged outputs since the last call (waits for one); outputs come before an error.

        Raises:
            BaseException: the error the engine thread put, once no output is pending.
        """
        while True:
            with self._lock:
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    return pending
                if self._error is not None:
                    raise self._error
                self._notified = False
                self._ready.clear()
            await self._ready.wait()


class _Reader:
    """Rebuilds whole outputs from merged deltas on the reader's side.

    Args:
        cumulative: intermediate outputs carry the whole text / token ids / logprobs so far
            (the token and logprob lists are the reader's own and grow with later outputs);
            when False they carry only the deltas, and only the finished output is whole.
    """

    def __init__(self, cumulative: bool) -> None:
        self.cumulative = cumulative
        self.parts: list[list[str]] = []
        self.ids: list[list[int]] = []
        self.lps: list[list[Any] | None] = []

    def build(self, pending: _Pending) -> RequestOutput:
        last = pending.last
        if not self.parts:
            self.parts = [[] for _ in last.outputs]
            self.ids = [[] for _ in last.outputs]
            self.lps = [None if lps is None else [] for lps in pending.lps]
        outputs = []
        for i, c in enumerate(last.outputs):
            delta_text = "".join(pending.parts[i])
            delta_ids, delta_lps = pending.ids[i], pending.lps[i]
            if delta_text:
                self.parts[i].append(delta_text)
            self.ids[i] += delta_ids
            if delta_lps is not None:
                self.lps[i] += delta_lps
            whole = self.cumulative or last.finished
            if whole and len(self.parts[i]) > 1:
                self.parts[i][:] = ["".join(self.parts[i])]
            outputs.append(
                CompletionOutput(
                    index=c.index,
                    text=(self.parts[i][0] if self.parts[i] else "") if whole else delta_text,
                    token_ids=self.ids[i] if whole else delta_ids,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    logprobs=self.lps[i] if whole else delta_lps,
                    cumulative_logprob=c.cumulative_logprob,
                    delta_text=delta_text,
                    delta_token_ids=delta_ids,
                    delta_logprobs=delta_lps,
                )
            )
        return RequestOutput(
            request_id=last.request_id,
            prompt=last.prompt,
            prompt_token_ids=last.prompt_token_ids,
            prompt_logprobs=last.prompt_logprobs,
            outputs=outputs,
            finished=last.finished,
            usage=last.usage,
            metrics=last.metrics,
        )


def _again(error: BaseException) -> BaseException:
    """A fresh copy of a terminal error, so each caller raises its own (with the same cause)."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


class AsyncEngine:
    """Serves many concurrent asyncio callers from one engine thread.

    Args:
        engine: the engine to drive (it must not be stepped by anyone else).

    Attributes:
        error: None while the engine serves; an :class:`EngineDeadError` (the thread died) or
            an :class:`EngineShutdownError` (shut down) once it no longer does.
        num_step_errors: steps that failed (their requests got the error; serving went on).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._adds: list[Request] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._stop = False
        self.error: BaseException | None = None
        self.num_step_errors = 0
        self._thread = threading.Thread(target=self._loop, name="rusteeze-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        """True while the engine thread is alive and serving."""
        return self._thread.is_alive() and self.error is None

    @property
    def is_dead(self) -> bool:
        """True when the engine thread died (not when it was shut down)."""
        return isinstance(self.error, EngineDeadError)

    async def generate(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[RequestOutput]:
        """Run one request, yielding its output whenever it changed since the previous one.

        Each output's ``text``, ``token_ids`` and ``logprobs`` are whole so far; the
        ``delta_*`` fields hold what is new since the previous output (a reader that falls
        behind gets the steps it missed merged into one output). The last output has
        ``finished=True``. Leaving the loop early (break, cancellation, client disconnect)
        aborts the request and frees its blocks.

        Args:
            prompt, params, request_id, **kwargs: as ``Engine.make_request``
                (``messages=`` for chat).

        Raises:
            InvalidRequestError: at once, for a bad request.
            EngineStepError: when a step computing this request failed.
            EngineDeadError: the engine thread died.
            EngineShutdownError: the engine was shut down.
        """
        request = self.engine.make_request(prompt, params, request_id, **kwargs)
        async for out in self.run(request):
            yield out

    async def run(self, request: Request, cumulative: bool = True) -> AsyncIterator[RequestOutput]:
        """Run a request already made by ``Engine.make_request``; outputs as :meth:`generate`.

        For callers that validate (tokenize) before committing to run, so the
        prompt is tokenized once. A request object runs at most once.

        Args:
            request: the request.
            cumulative: False for readers that only use the ``delta_*`` fields (a stream):
                unfinished outputs then carry only the deltas, so nothing grows per output.

        Raises:
            InvalidRequestError: when the request id is already running.
            EngineStepError, EngineDeadError, EngineShutdownError: as :meth:`generate`.
        """
        rid = request.request_id
        request.output_deltas = True
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            if self.error is not None:
                raise _again(self.error)
            if self._stop:
                raise EngineShutdownError("the engine has been shut down")
            if rid in self._streams:
                raise InvalidRequestError(f"request id {rid!r} is already in use", param="request_id")
            self._streams[rid] = stream
            self._adds.append(request)
        self._wake.set()
        reader = _Reader(cumulative)
        finished = False
        try:
            while True:
                try:
                    pending = await stream.get()
                except BaseException as e:
                    finished = not isinstance(e, asyncio.CancelledError)  # the engine is done with it
                    raise
                out = reader.build(pending)
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            with self._lock:
                self._streams.pop(rid, None)
                if not finished:
                    self._aborts.append(rid)
            self._wake.set()

    def abort(self, request_id: str) -> None:
        """Ask the engine thread to abort a request (its final output, if anyone waits, says "abort")."""
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread after its current step; pending requests get EngineShutdownError."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    # -- engine thread ----------------------------------------------------------

    def _send(self, request_id: str, item: RequestOutput | BaseException) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is not None and not stream.put(item):
            self.engine.abort(request_id)

    def _take_work(self) -> tuple[list[Request], list[str]]:
        with self._lock:
            adds, aborts = self._adds, self._aborts
            self._adds, self._aborts = [], []
        return adds, aborts

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:
            log.error("the engine thread died; every request now fails", exc_info=e)
            error = EngineDeadError(f"the engine stopped: {e!r}")
            error.__cause__ = e
            self._close(error)
            return
        self._close(EngineShutdownError("the engine has been shut down"))

    def _serve(self) -> None:
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

    def _close(self, error: BaseException) -> None:
        """Fail every waiting request (and any later one) with ``error``; free what can be freed."""
        with self._lock:
            self.error = error
            streams = list(self._streams.items())
            adds, self._adds = self._adds, []
        for rid in [*self.engine.requests, *(r.request_id for r in adds)]:
            with contextlib.suppress(Exception):  # a dead engine may fail here too: the callers come first
                self.engine.abort(rid)
        for _, stream in streams:
            stream.put(_again(error))
