"""Running one HTTP request's engine requests: validation, the waiting bound, metrics, merged outputs.

A completions request with several prompts, or any request, becomes one
engine request per prompt (each with its own ``n`` completions). Every prompt
is validated (``Engine.make_request``: tokenizing, context length, token ids)
before any is queued, so the engine never sees an invalid request and a bad
prompt costs nothing. Outputs of the engine requests are merged into one
stream of ``(prompt index, RequestOutput)``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.engine import EngineStepError
from rusteeze.engine.outputs import RequestOutput
from rusteeze.engine.request import Request
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.server.http import APIError, bad_request
from rusteeze.server.metrics import RequestTimer
from rusteeze.server.state import ServerState

_DONE = object()


def new_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


class Generation:
    """The engine requests behind one HTTP request.

    Args:
        state: the server state.
        base_id: the response id; engine requests are ``{base_id}-{i}``.
        inputs: per prompt, keyword arguments of ``Engine.make_request``: ``prompt=`` or
            ``messages=`` (+ ``chat_template_kwargs=``).
        params: the sampling parameters of every prompt.

    Raises:
        APIError: 400 for an invalid prompt (naming the field), 503 while the
            engine is not ready or when too many requests wait.
    """

    def __init__(self, state: ServerState, base_id: str, inputs: list[dict[str, Any]], params: SamplingParams) -> None:
        self.state = state
        self.aengine = state.require_engine()
        # Checked before any tokenizing. A soft bound: requests count as waiting
        # from their first iteration until their first output.
        if state.num_waiting + len(inputs) > state.settings.max_waiting_requests:
            raise APIError(
                503, f"the server is overloaded ({state.num_waiting} requests waiting); retry later", code="overloaded"
            )
        self.ids = [f"{base_id}-{i}" for i in range(len(inputs))]
        engine = state.engine
        self.requests: list[Request] = []
        for rid, kw in zip(self.ids, inputs, strict=True):
            try:
                self.requests.append(engine.make_request(kw.get("prompt"), params, rid, **_extra(kw)))
            except InvalidRequestError as e:
                raise bad_request(str(e), param=e.param) from None

    async def _one(self, i: int) -> AsyncIterator[RequestOutput]:
        """Outputs of engine request ``i`` with metrics and bookkeeping around them."""
        state, rid = self.state, self.ids[i]
        timer: RequestTimer = state.metrics.timer()
        state.num_waiting += 1
        state.inflight.add(rid)
        waiting, last = True, None
        try:
            async for out in self.aengine.run(self.requests[i]):
                if waiting:
                    waiting = False
                    state.num_waiting -= 1
                timer.observe(out)
                last = out
                yield out
        except InvalidRequestError as e:  # raced: e.g. a duplicate id
            raise bad_request(str(e), param=e.param) from None
        except EngineStepError as e:
            raise APIError(500, f"the engine failed while generating: {e.__cause__!r}", code="engine_error") from e
        except RuntimeError as e:  # the engine was shut down under us
            raise APIError(503, str(e), code="shutting_down") from e
        finally:
            if waiting:
                state.num_waiting -= 1
            state.inflight.discard(rid)
            timer.finish(last)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every output of every prompt, as ``(prompt index, output)``, as soon as it exists.

        Leaving the iteration early (or being cancelled) aborts the requests still running.
        """
        if len(self.ids) == 1:
            async for out in self._one(0):
                yield 0, out
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for out in self._one(i):
                    queue.put_nowait((i, out))
            except Exception as e:
                queue.put_nowait((i, e))
            finally:
                queue.put_nowait((i, _DONE))

        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(self.ids))]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()


def _extra(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if k != "prompt"}


def usage_json(usages: list[Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` object, summed over the engine requests' ``Usage``."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    cached = sum(u.cached_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def shutdown_abort() -> APIError:
    """The error of a request aborted because the server is stopping."""
    return APIError(503, "the server is shutting down; the request was aborted", code="shutting_down")
