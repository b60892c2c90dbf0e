"""Running one HTTP request's engine requests: validation, the waiting bound, metrics, merged outputs.

A completions request with several prompts, or any request, becomes one
engine request per prompt (each with its own ``n`` completions). Every prompt
is validated (``Engine.make_request``: chat template, tokenizing, context
length, token ids) before any is queued, so the engine never sees an invalid
request and a bad prompt costs nothing. Validation runs on the server's
tokenizer threads, never on the event loop: a slow template or a huge prompt
delays only its own request. Outputs of the engine requests are merged into one
stream of ``(prompt index, RequestOutput)``; outputs carry deltas (the finished
one is whole) and a reader that falls behind gets them merged, never queued.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.async_engine import EngineDeadError, EngineShutdownError
from rusteeze.engine.engine import EngineStepError
from rusteeze.engine.outputs import RequestOutput
from rusteeze.engine.request import Request
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.server.http import APIError, bad_request
from rusteeze.server.metrics import RequestTimer
from rusteeze.server.prefill_log import prefill_log
from rusteeze.server.state import ServerState

_DONE = object()


def new_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


class Generation:
    """The engine requests behind one HTTP request; build it with :meth:`create`.

    Args:
        state: the server state.
        ids: the engine request ids (``{base_id}-{i}``).
        requests: the validated engine requests, one per prompt.
    """

    def __init__(self, state: ServerState, ids: list[str], requests: list[Request]) -> None:
        self.state = state
        self.aengine = state.require_engine()
        self.ids = ids
        self.requests = requests

    @classmethod
    async def create(
        cls, state: ServerState, base_id: str, inputs: list[dict[str, Any]], params: SamplingParams
    ) -> Generation:
        """Validate every prompt (on a tokenizer thread) and return the ready Generation.

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
        state.require_engine()
        # Checked before any tokenizing. A soft bound: requests count as waiting while
        # they are validated and from their first iteration until their first output.
        waiting = state.num_waiting + state.num_preparing
        if waiting + len(inputs) > state.settings.max_waiting_requests:
            message = f"the server is overloaded ({waiting} requests waiting); retry later"
            raise APIError(503, message, code="overloaded")
        ids = [f"{base_id}-{i}" for i in range(len(inputs))]
        engine = state.engine

        def make() -> list[Request]:
            return [
                engine.make_request(kw.get("prompt"), params, rid, **_extra(kw))
                for rid, kw in zip(ids, inputs, strict=True)
            ]

        state.num_preparing += len(inputs)
        try:
            requests = await state.run_blocking(make)
        except InvalidRequestError as e:
            raise bad_request(str(e), param=e.param) from None
        finally:
            state.num_preparing -= len(inputs)
        return cls(state, ids, requests)

    async def _one(self, i: int) -> AsyncIterator[RequestOutput]:
        """Outputs of engine request ``i`` with metrics and bookkeeping around them."""
        state, rid = self.state, self.ids[i]
        timer: RequestTimer = state.metrics.timer()
        state.num_waiting += 1
        state.inflight.add(rid)
        waiting, last = True, None
        try:
            with prefill_log(self.requests[i]) as prefill:  # progress lines for a long prompt
                async for out in self.aengine.run(self.requests[i], cumulative=False):
                    if waiting:
                        waiting = False
                        state.num_waiting -= 1
                        if prefill is not None:
                            prefill.finish()
                    timer.observe(out)
                    last = out
                    yield out
        except InvalidRequestError as e:  # raced: e.g. a duplicate id
            raise bad_request(str(e), param=e.param) from None
        except EngineStepError as e:  # a fault of the engine, not of the request
            raise APIError(500, f"the engine failed while generating: {e.__cause__!r}", code="engine_error") from e
        except EngineDeadError as e:
            raise engine_dead(e) from e
        except EngineShutdownError as e:
            raise APIError(503, f"the server is shutting down: {e}", code="shutting_down") from e
        finally:
            if waiting:
                state.num_waiting -= 1
            state.inflight.discard(rid)
            timer.finish(last)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every output of every prompt, as ``(prompt index, output)``, as soon as it exists.

        Leaving the iteration early (or being cancelled) aborts the requests still running.
        Unfinished outputs carry only their ``delta_*`` fields' worth (see ``AsyncEngine.run``).
        """
        if len(self.ids) == 1:
            async for out in self._one(0):
                yield 0, out
            return
        # Bounded: a reader that falls behind stops the pumps, and the engine merges their
        # outputs while they wait, so nothing piles up here.
        queue: asyncio.Queue = asyncio.Queue(maxsize=len(self.ids))

        async def pump(i: int) -> None:
            try:
                async for out in self._one(i):
                    await queue.put((i, out))
            except Exception as e:
                await queue.put((i, e))
                return
            await queue.put((i, _DONE))

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


def engine_dead(error: BaseException) -> APIError:
    """The 503 of a request that cannot run because the engine thread died (the message has the cause)."""
    return APIError(503, f"the engine is not running: {error}", code="engine_dead")


def shutdown_abort() -> APIError:
    """The error of a request aborted because the server is stopping."""
    return APIError(503, "the server is shutting down; the request was aborted", code="shutting_down")
