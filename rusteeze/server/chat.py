"""POST /v1/chat/completions: the model's chat template over the messages, whole or streamed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from rusteeze.engine.outputs import CompletionOutput
from rusteeze.server.generation import Generation, new_id, shutdown_abort, usage_json
from rusteeze.server.http import APIError, HTTPRequest, Response
from rusteeze.server.logprobs import chat_logprobs
from rusteeze.server.protocol import ChatRequest, parse_chat
from rusteeze.server.sse import DONE, StreamingResponse, cancel_on_disconnect, sse
from rusteeze.server.state import ServerState
from rusteeze.server.tool_output import ToolDeltaStream, tool_finish_reason, tool_message
from rusteeze.server.tool_prompt import chat_inputs


async def create_chat_completion(state: ServerState, request: HTTPRequest) -> Response | StreamingResponse:
    """Handle ``POST /v1/chat/completions``.

    Raises:
        APIError: 400 (invalid body or messages, prompt too long), 404 (unknown model), 413, 503.
    """
    body = await request.json(state.settings.max_body_bytes)
    req = parse_chat(body, trust_chat_template=state.settings.trust_request_chat_template)
    state.check_model(req.model)
    response_id = new_id("chatcmpl")
    template_kwargs = {**req.template_kwargs, "add_generation_prompt": req.add_generation_prompt}
    state.require_engine()
    tokenizer = state.engine.tokenizer
    messages, template_kwargs = chat_inputs(tokenizer, req.messages, req.tools, template_kwargs)
    inputs = [{"messages": messages, "chat_template_kwargs": template_kwargs}]
    params = req.tools.keep_call_tags(req.params, tokenizer) if req.tools is not None else req.params
    gen = await Generation.create(state, response_id, inputs, params)
    fmt = _Formatter(state, req, gen, response_id)
    if req.stream:
        return StreamingResponse(fmt.stream(request))
    return Response.json(await cancel_on_disconnect(request.receive, fmt.collect(request)))


class _Formatter:
    """Turns a Generation's outputs into chat completion objects and chunks."""

    def __init__(self, state: ServerState, req: ChatRequest, gen: Generation, response_id: str) -> None:
        self.state, self.req, self.gen = state, req, gen
        self.id = response_id
        self.created = int(time.time())
        self.parse_tools = req.tools is not None and req.tools.parses
        self.tool_streams: dict[int, ToolDeltaStream] = {}  # per choice, when calls are parsed

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.req.model or self.state.model_name}

    def _logprobs(self, token_ids: list[int], entries: list | None) -> dict[str, Any] | None:
        if not self.req.logprobs or entries is None:
            return None
        return chat_logprobs(token_ids, entries, self.req.top_logprobs)

    async def collect(self, request: HTTPRequest) -> dict[str, Any]:
        """The whole response of a non-streaming request."""
        last = None
        async for _, out in self.gen.outputs():
            last = out
        assert last is not None and last.finished
        choices = []
        for c in last.outputs:
            if c.finish_reason == "abort":
                raise shutdown_abort()
            message, reason = {"role": "assistant", "content": c.text}, c.finish_reason
            if self.parse_tools:
                message, made_calls = tool_message(c.text, self.req.tools)
                reason = tool_finish_reason(reason, made_calls)
            choices.append(
                {
                    "index": c.index,
                    "message": message,
                    "logprobs": self._logprobs(c.token_ids, c.logprobs),
                    "finish_reason": reason,
                    "stop_reason": c.stop_reason,
                }
            )
        usage = usage_json([last.usage])
        request.log_usage = (usage["prompt_tokens"], usage["completion_tokens"])
        return {**self._base("chat.completion"), "choices": choices, "usage": usage}

    async def stream(self, request: HTTPRequest) -> AsyncIterator[bytes]:
        """Server-sent chunks (the first of each choice carries the role), optional usage, ``[DONE]``."""
        usage = None
        started: set[int] = set()
        finished: set[int] = set()
        try:
            async for _, out in self.gen.outputs():
                usage = out.usage
                for c in out.outputs:
                    chunk = self._chunk(c, started, finished)
                    if chunk is not None:
                        yield sse(chunk)
            if self.req.include_usage and usage is not None:
                yield sse({**self._base("chat.completion.chunk"), "choices": [], "usage": usage_json([usage])})
        except APIError as e:
            yield sse(e.body())
        finally:
            if usage is not None:
                request.log_usage = (usage.prompt_tokens, usage.completion_tokens)
        yield DONE

    def _chunk(self, c: CompletionOutput, started: set[int], finished: set[int]) -> dict[str, Any] | None:
        if c.index in finished:
            return None
        if c.finish_reason == "abort":
            raise shutdown_abort()
        delta: dict[str, Any] = {"content": c.delta_text}
        reason = c.finish_reason
        if self.parse_tools:
            if c.index not in self.tool_streams:
                self.tool_streams[c.index] = ToolDeltaStream(self.req.tools)
            tools = self.tool_streams[c.index]
            delta = tools.delta(c.delta_text, final=reason is not None)
            reason = tool_finish_reason(reason, tools.made_calls)
        empty = not delta.get("content") and "tool_calls" not in delta
        if empty and reason is None and not (self.req.logprobs and c.delta_token_ids):
            return None
        if c.index not in started:
            started.add(c.index)
            delta = {"role": "assistant", **delta}
        if c.finish_reason is not None:
            finished.add(c.index)
        choice = {
            "index": c.index,
            "delta": delta,
            "logprobs": self._logprobs(c.delta_token_ids, c.delta_logprobs),
            "finish_reason": reason,
        }
        if c.finish_reason is not None:
            choice["stop_reason"] = c.stop_reason
        chunk = {**self._base("chat.completion.chunk"), "choices": [choice]}
        if self.req.include_usage:
            chunk["usage"] = None
        return chunk
