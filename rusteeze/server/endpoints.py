"""The small endpoints: models, tokenize / detokenize, health, version, metrics."""

from __future__ import annotations

from typing import Any

from rusteeze import __version__
from rusteeze.errors import InvalidRequestError
from rusteeze.server.http import APIError, HTTPRequest, Response, bad_request
from rusteeze.server.metrics import CONTENT_TYPE
from rusteeze.server.protocol import parse_messages
from rusteeze.server.state import ServerState
from rusteeze.server.tool_prompt import chat_inputs
from rusteeze.server.tools import parse_tool_request


async def list_models(state: ServerState, request: HTTPRequest) -> Response:
    """``GET /v1/models``: the served model, once under each of its names (the first is the default)."""
    max_len = state.engine.max_model_len if state.engine is not None else None
    models = [
        {"id": name, "object": "model", "created": state.created, "owned_by": "rusteeze", "max_model_len": max_len}
        for name in state.model_names
    ]
    return Response.json({"object": "list", "data": models})


async def health(state: ServerState, request: HTTPRequest) -> Response:
    """``GET /health``: 200 when ready; 503 while loading, after a failed load or while stopping."""
    try:
        state.require_engine()
    except APIError as e:
        return Response.error(e)
    return Response.json({"status": "ok"})


async def version(state: ServerState, request: HTTPRequest) -> Response:
    """``GET /version``."""
    return Response.json({"version": __version__})


async def metrics(state: ServerState, request: HTTPRequest) -> Response:
    """``GET /metrics``: Prometheus text format."""
    return Response(200, state.metrics.render(), content_type=CONTENT_TYPE)


async def tokenize(state: ServerState, request: HTTPRequest) -> Response:
    """``POST /tokenize``: ``{"prompt": str}`` or ``{"messages": [...]}`` → ``{"tokens", "count", "max_model_len"}``.

    Messages may come with ``tools`` (and ``tool_choice``): they are rendered as chat renders them.

    Raises:
        APIError: 400 for a missing / ill-typed prompt or messages.
    """
    body = await request.json(state.settings.max_body_bytes)
    state.require_engine()
    state.check_model(_opt(body, "model", str))
    engine = state.engine
    special = _opt(body, "add_special_tokens", bool)
    if body.get("messages") is not None:
        messages = parse_messages(body["messages"])
        messages, kwargs = chat_inputs(engine.tokenizer, messages, parse_tool_request(body), {})
        add_prompt = _opt(body, "add_generation_prompt", bool)
        add_prompt = True if add_prompt is None else add_prompt

        def work() -> list[int]:
            return engine.tokenizer.encode_chat(messages, add_generation_prompt=add_prompt, **kwargs)
    else:
        prompt = _opt(body, "prompt", str)
        if prompt is None:
            raise bad_request("prompt (a string) or messages is required", param="prompt")
        add_special = True if special is None else special

        def work() -> list[int]:
            return engine.tokenizer.encode(prompt, add_special_tokens=add_special)

    try:
        ids = await state.run_blocking(work)
    except InvalidRequestError as e:
        raise bad_request(str(e), param=e.param) from None
    return Response.json({"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len})


async def detokenize(state: ServerState, request: HTTPRequest) -> Response:
    """``POST /detokenize``: ``{"tokens": [int]}`` → ``{"prompt": str}``.

    Raises:
        APIError: 400 when tokens is not a list of ids in the vocabulary.
    """
    body = await request.json(state.settings.max_body_bytes)
    state.require_engine()
    state.check_model(_opt(body, "model", str))
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise bad_request("tokens must be a list of token ids", param="tokens")
    tokenizer = state.engine.tokenizer
    try:
        text = await state.run_blocking(lambda: tokenizer.decode(tokens, skip_special_tokens=False))
    except InvalidRequestError as e:
        raise bad_request(str(e), param="tokens") from None
    return Response.json({"prompt": text})


def _opt(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise bad_request(f"{name} must be a {kind.__name__}, got {value!r}", param=name)
    return value
