"""POST /v1/completions: text completion of one or more prompts, whole or streamed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.outputs import CompletionOutput, RequestOutput
from rusteeze.server.generation import Generation, new_id, shutdown_abort, usage_json
from rusteeze.server.http import APIError, HTTPRequest, Response
from rusteeze.server.logprobs import completion_logprobs, merge_completion_logprobs
from rusteeze.server.protocol import CompletionRequest, parse_completion
from rusteeze.server.sse import DONE, StreamingResponse, cancel_on_disconnect, sse
from rusteeze.server.state import ServerState


async def create_completion(state: ServerState, request: HTTPRequest) -> Response | StreamingResponse:
    """Handle ``POST /v1/completions``.

    Raises:
        APIError: 400 (invalid body or prompt), 404 (unknown model), 413, 503.
    """
    body = await request.json(state.settings.max_body_bytes)
    req = parse_completion(body)
    state.check_model(req.model)
    response_id = new_id("cmpl")
    gen = await Generation.create(state, response_id, [{"prompt": p} for p in req.prompts], req.params)
    fmt = _Formatter(state, req, gen, response_id)
    if req.stream:
        return StreamingResponse(fmt.stream(request))
    return Response.json(await cancel_on_disconnect(request.receive, fmt.collect(request)))


class _Formatter:
    """Turns a Generation's outputs into completion objects and chunks."""

    def __init__(self, state: ServerState, req: CompletionRequest, gen: Generation, response_id: str) -> None:
        self.state, self.req, self.gen = state, req, gen
        self.id = response_id
        self.created = int(time.time())
        self.n = req.params.n

    def _prompt_text(self, i: int) -> str:
        text = self.gen.requests[i].prompt
        if text is None:
            text = self.state.engine.tokenizer.decode(self.gen.requests[i].prompt_token_ids, skip_special_tokens=False)
        return text

    def _prompt_logprobs(self, i: int, out: RequestOutput) -> dict[str, Any] | None:
        if not self.req.echo or self.req.logprobs is None or out.prompt_logprobs is None:
            return None
        tok = self.state.engine.tokenizer
        return completion_logprobs(out.prompt_token_ids, out.prompt_logprobs, self.req.logprobs, 0, tok.token_to_str)

    def _logprobs(self, token_ids: list[int], entries: list | None, offset: int) -> dict[str, Any] | None:
        if self.req.logprobs is None or entries is None:
            return None
        return completion_logprobs(
            token_ids, entries, self.req.logprobs, offset, self.state.engine.tokenizer.token_to_str
        )

    def _base(self, obj: str = "text_completion") -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.req.model or self.state.model_name}

    async def collect(self, request: HTTPRequest) -> dict[str, Any]:
        """The whole response of a non-streaming request."""
        last: dict[int, RequestOutput] = {}
        async for i, out in self.gen.outputs():
            last[i] = out
        choices = []
        for i in sorted(last):
            out = last[i]
            prompt = self._prompt_text(i) if self.req.echo else ""
            for c in out.outputs:
                if c.finish_reason == "abort":
                    raise shutdown_abort()
                lps = self._logprobs(c.token_ids, c.logprobs, len(prompt))
                if lps is not None and self.req.echo:
                    lps = merge_completion_logprobs(self._prompt_logprobs(i, out), lps)
                choices.append(
                    {
                        "index": i * self.n + c.index,
                        "text": prompt + c.text,
                        "logprobs": lps,
                        "finish_reason": c.finish_reason,
                        "stop_reason": c.stop_reason,
                    }
                )
        usage = usage_json([o.usage for o in last.values()])
        request.log_usage = (usage["prompt_tokens"], usage["completion_tokens"])
        return {**self._base(), "choices": choices, "usage": usage}

    async def stream(self, request: HTTPRequest) -> AsyncIterator[bytes]:
        """Server-sent chunks: text deltas per choice, an optional usage chunk, then ``[DONE]``."""
        usages: dict[int, Any] = {}
        sent: dict[int, int] = {}  # choice index -> characters sent
        finished: set[int] = set()
        try:
            async for i, out in self.gen.outputs():
                usages[i] = out.usage
                for c in out.outputs:
                    chunk = self._chunk(i, out, c, sent, finished)
                    if chunk is not None:
                        yield sse(chunk)
            if self.req.include_usage:
                yield sse({**self._base(), "choices": [], "usage": usage_json(list(usages.values()))})
        except APIError as e:
            yield sse(e.body())
        finally:
            usage = usage_json(list(usages.values()))
            request.log_usage = (usage["prompt_tokens"], usage["completion_tokens"])
        yield DONE

    def _chunk(
        self, i: int, out: RequestOutput, c: CompletionOutput, sent: dict[int, int], finished: set[int]
    ) -> dict[str, Any] | None:
        index = i * self.n + c.index
        if index in finished:
            return None
        if c.finish_reason == "abort":
            raise shutdown_abort()
        text, first = c.delta_text, index not in sent
        prompt_lps = None
        if first and self.req.echo:
            text = self._prompt_text(i) + text
            prompt_lps = self._prompt_logprobs(i, out)
        if not text and c.finish_reason is None and not (self.req.logprobs is not None and c.delta_token_ids):
            return None
        offset = sent.get(index, 0)
        lps = self._logprobs(c.delta_token_ids, c.delta_logprobs, offset + len(text) - len(c.delta_text))
        if lps is not None and prompt_lps is not None:
            lps = merge_completion_logprobs(prompt_lps, lps)
        sent[index] = offset + len(text)
        if c.finish_reason is not None:
            finished.add(index)
        choice = {"index": index, "text": text, "logprobs": lps, "finish_reason": c.finish_reason}
        if c.finish_reason is not None:
            choice["stop_reason"] = c.stop_reason
        chunk = {**self._base(), "choices": [choice]}
        if self.req.include_usage:
            chunk["usage"] = None
        return chunk
