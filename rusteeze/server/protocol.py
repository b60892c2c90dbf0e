"""Request bodies of /v1/completions and /v1/chat/completions → validated request objects.

Rules (what the tests hold us to): a JSON ``null`` is the same as an absent
field; fields we do not know and that cannot change the answer (``user``,
``metadata``, ``store``, ...) are ignored; fields that would change the answer
but are not supported (``suffix``, ``functions``, ``audio``, ...)
are a 400 naming the field, as are wrong types and out-of-range values. Tools
(``tools``, ``tool_choice``, tool messages) are checked in :mod:`rusteeze.server.tools`. The
sampling fields are checked by :class:`SamplingParams`, whose errors carry the
field name; everything that reaches the engine is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.server.http import APIError, bad_request
from rusteeze.server.response_format import structured_outputs_of
from rusteeze.server.tools import ToolRequest, parse_tool_request, tool_message_fields

MAX_N = 128
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# Fields passed to SamplingParams unchanged (their checks live there).
_SAMPLING_FIELDS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "min_tokens",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "include_stop_str_in_output",
    "skip_special_tokens",
)


@dataclass
class CompletionRequest:
    """A parsed /v1/completions body.

    Attributes:
        model: the model the client named (None: the served one).
        prompts: one engine request per entry: text or token ids.
        params: the sampling parameters of every prompt.
        stream: answer with server-sent events.
        include_usage: (stream) end with a usage chunk.
        echo: put the prompt in front of each completion.
        logprobs: how many top alternatives per token (None: no logprobs).
    """

    model: str | None
    prompts: list[str | list[int]]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None


@dataclass
class ChatRequest:
    """A parsed /v1/chat/completions body.

    Attributes:
        model: the model the client named (None: the served one).
        messages: the conversation, content flattened to strings.
        params: the sampling parameters.
        stream, include_usage: as in :class:`CompletionRequest`.
        logprobs: return per-token logprobs.
        top_logprobs: alternatives per token (with ``logprobs``).
        template_kwargs: extra chat-template variables (``chat_template_kwargs``).
        add_generation_prompt: end the rendered prompt with an assistant header.
        tools: the request's tools and tool_choice (None: no tools).
    """

    model: str | None
    messages: list[dict[str, Any]]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = True
    tools: ToolRequest | None = None


# Template variables a request cannot set through chat_template_kwargs.
_RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools"})
_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", dict: "an object"}


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` checked against ``kind`` (bool is not an int); null or absent → ``default``."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise bad_request(f"{name} must be {names}, got {value!r}", param=name)
    return value


def _reject(body: dict[str, Any], name: str, why: str) -> None:
    raise bad_request(f"{name} is not supported: {why}", param=name)


def _common(body: dict[str, Any], max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None):
    """Model, stream flags and SamplingParams shared by both endpoints."""
    model = _get(body, "model", str)
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    include_usage = _get(options, "include_usage", bool, False) if stream else False
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        _reject(body, "best_of", "use n for several completions")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}, got {n}", param="n")
    seed = body.get("seed")
    if isinstance(seed, int) and not -(2**63) <= seed < 2**63:  # torch generators take 64-bit seeds
        raise bad_request(f"seed must fit in 64 bits, got {seed}", param="seed")
    kwargs: dict[str, Any] = {k: body[k] for k in _SAMPLING_FIELDS if body.get(k) is not None}
    bias = _get(body, "logit_bias", dict)
    if bias is not None:
        try:
            kwargs["logit_bias"] = {int(k): v for k, v in bias.items()}
        except ValueError:
            raise bad_request("logit_bias keys must be token ids (integers as strings)", param="logit_bias") from None
    structured = structured_outputs_of(body)  # response_format / structured_outputs
    if structured is not None:
        kwargs["structured_outputs"] = structured
    try:
        params = SamplingParams(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs, **kwargs)
    except InvalidRequestError as e:
        raise bad_request(str(e), param=e.param) from None
    except TypeError as e:  # an unhashable or otherwise unusable value deep in a field
        raise bad_request(f"invalid sampling parameters: {e}") from None
    return model, stream, include_usage, params


def _max_tokens(body: dict[str, Any], *names: str, default: int | None) -> int | None:
    for name in names:
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_request(f"{name} must be an integer >= 1, got {value!r}", param=name)
            return value
    return default


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    """Validate a /v1/completions body.

    Raises:
        APIError: 400 naming the field for anything invalid or unsupported.
    """
    if body.get("suffix") not in (None, ""):
        _reject(body, "suffix", "this server does not do fill-in-the-middle")
    prompts = _prompts(body.get("prompt"))
    echo = _get(body, "echo", bool, False)
    logprobs = _get(body, "logprobs", int)
    max_tokens = _max_tokens(body, "max_tokens", default=16)
    model, stream, include_usage, params = _common(body, max_tokens, logprobs, logprobs if echo else None)
    return CompletionRequest(model, prompts, params, stream, include_usage, echo, logprobs)


def _prompts(prompt: Any) -> list[str | list[int]]:
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if prompt is None:
        raise bad_request("prompt is required", param="prompt")
    if isinstance(prompt, str) or is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise bad_request(
        "prompt must be a string, a list of strings, a list of token ids or a list of token id lists (none empty)",
        param="prompt",
    )


def parse_chat(body: dict[str, Any], trust_chat_template: bool = False) -> ChatRequest:
    """Validate a /v1/chat/completions body.

    Args:
        body: the parsed JSON body.
        trust_chat_template: accept ``chat_template_kwargs.chat_template`` (a template of the
            client's own, rendered instead of the model's; ``--trust-request-chat-template``).

    Raises:
        APIError: 400 naming the field for anything invalid or unsupported.
    """
    tools = parse_tool_request(body)
    if body.get("modalities") not in (None, ["text"]):
        _reject(body, "modalities", "only text output is available")
    if body.get("audio") is not None:
        _reject(body, "audio", "only text output is available")
    messages = parse_messages(body.get("messages"))
    logprobs = _get(body, "logprobs", bool, False)
    top = _get(body, "top_logprobs", int)
    if top is not None and not logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", param="top_logprobs")
    max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens", default=None)
    k = (top or 0) if logprobs else None
    model, stream, include_usage, params = _common(body, max_tokens, k, None)
    kwargs = _get(body, "chat_template_kwargs", dict, {})
    reserved = sorted(set(kwargs) & _RESERVED_TEMPLATE_KWARGS)
    if reserved:
        raise bad_request(f"chat_template_kwargs cannot set {reserved[0]!r}", param="chat_template_kwargs")
    template = kwargs.get("chat_template")
    if template is not None and not trust_chat_template:
        raise bad_request(
            "chat_template_kwargs.chat_template is not accepted: this server renders only the model's chat template "
            "(start it with --trust-request-chat-template to allow templates from requests)",
            param="chat_template_kwargs.chat_template",
        )
    if template is not None and not isinstance(template, str):
        raise bad_request(
            f"chat_template_kwargs.chat_template must be a string, got {type(template).__name__}",
            param="chat_template_kwargs.chat_template",
        )
    add_prompt = _get(body, "add_generation_prompt", bool, True)
    if tools is not None:  # last: a forced call's schema must see any other output constraint
        params = tools.constrain(params)
    return ChatRequest(model, messages, params, stream, include_usage, logprobs, top or 0, kwargs, add_prompt, tools)


def parse_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate chat messages and flatten text-part content to strings.

    Raises:
        APIError: 400 naming the message (``messages[i].role`` ...) at fault.
    """
    if messages is None:
        raise bad_request("messages is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of messages", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(
                f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}", param=f"{where}.role"
            )
        content = _content(m.get("content"), f"{where}.content", allow_none=role == "assistant")
        message = {k: v for k, v in m.items() if k in ("name", "reasoning_content")}
        message.update(tool_message_fields(m, role, where))
        out.append({**message, "role": "system" if role == "developer" else role, "content": content})
    return out


def _content(content: Any, where: str, allow_none: bool) -> str:
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where}[{j}]: only text parts are supported, got {kind!r}", param=f"{where}[{j}]")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where} must be a string or an array of text parts", param=where)


__all__ = ["MAX_N", "APIError", "ChatRequest", "CompletionRequest", "parse_chat", "parse_completion", "parse_messages"]
