"""Tools into the prompt: through the chat template when it knows them, else a fallback system block.

A chat template *knows tools* when it reads the ``tools`` variable (Qwen2.5,
Llama 3.1, Hermes, Mistral templates do): it then gets the tool list as
``tools`` and the conversation as the client sent it (assistant
``tool_calls`` with their arguments as JSON values, ``tool`` messages with
their ``tool_call_id``), and renders them in the model's own format.

Any other template (SmolLM2's, plain ChatML) gets the fallback:

* a system block (appended to the first system message, or a new first
  message) listing the tools as JSON inside ``<tools></tools>`` and the exact
  call format: Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks for ``"auto"``, a bare JSON array of calls for ``"required"``, the
  one call object for a named function (the formats the parser reads and the
  constraint produces). With ``"none"`` no block is added;
* earlier assistant calls written into their message's content as those
  blocks, and each run of ``tool`` messages as one ``user`` message of
  ``<tool_response>...</tool_response>`` blocks (any template renders a user
  turn, and turns still alternate).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2

from rusteeze.server.tools import ToolRequest
from rusteeze.tokenizer import Tokenizer

_CALL_SHAPE = '{"name": <function name>, "arguments": <the arguments, a JSON object>}'


@lru_cache(maxsize=32)
def template_knows_tools(template: str) -> bool:
    """Whether a chat template reads the ``tools`` variable (a name token, not text or a comment)."""
    try:
        return any(kind == "name" and value == "tools" for _, kind, value in jinja2.Environment().lex(template))
    except jinja2.TemplateSyntaxError:
        return False  # rendering reports it


def chat_inputs(
    tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: ToolRequest | None, template_kwargs: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and template variables that render this request's tools and tool messages.

    Args:
        tokenizer: the model's tokenizer (its chat templates decide native or fallback).
        messages: the validated conversation (see ``parse_messages``).
        tools: the request's tools, or None.
        template_kwargs: the request's template variables (may hold its own ``chat_template``).

    Returns:
        ``(messages, template_kwargs)`` for ``Engine.make_request``.
    """
    template = template_kwargs.get("chat_template")
    if template is None and tools is not None:
        template = tokenizer.chat_templates.get("tool_use")
    if template is None:
        template = tokenizer.chat_template
    if not isinstance(template, str):
        return messages, template_kwargs  # no template: rendering raises the error that says so
    if template_knows_tools(template):
        if tools is None:
            return messages, template_kwargs
        return messages, {**template_kwargs, "tools": tools.tools}
    messages = fallback_messages(messages)
    if tools is not None and tools.choice != "none":
        messages = _with_system_block(messages, tools_prompt(tools))
    return messages, template_kwargs


def tools_prompt(tools: ToolRequest) -> str:
    """The fallback system block: the tools as JSON and the exact format of an answer that calls them."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools.tools)
    lines = ["# Tools", "", "You can call these functions (their arguments are given as JSON schemas):", "<tools>"]
    lines += [listing, "</tools>", ""]
    if tools.choice == "function":
        call = _CALL_SHAPE.replace("<function name>", json.dumps(tools.function))
        lines.append(f"Answer only with this JSON object, calling {tools.function}: {call}")
    elif tools.choice == "required":
        many = "one or more calls" if tools.parallel else "exactly one call"
        lines.append(f"Answer only with a JSON array of {many}: [{_CALL_SHAPE}]")
    else:
        many = "one block per call" if tools.parallel else "at most one call"
        lines += [
            f"To call a function, answer with {many}, each holding a JSON object with its name and arguments:",
            "<tool_call>",
            _CALL_SHAPE,
            "</tool_call>",
            "When no function is needed, answer in plain text.",
        ]
    return "\n".join(lines)


def fallback_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant calls written as ``<tool_call>`` blocks; runs of tool results as one user message."""
    out: list[dict[str, Any]] = []
    results: list[str] = []  # the tool results of the current run
    for message in messages:
        if message["role"] == "tool":
            results.append(f"<tool_response>\n{message['content']}\n</tool_response>")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        calls = message.get("tool_calls")
        if calls:
            blocks = [_call_block(c["function"]) for c in calls]
            content = "\n".join([message["content"], *blocks] if message.get("content") else blocks)
            message = {k: v for k, v in message.items() if k != "tool_calls"} | {"content": content}
        out.append(message)
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    return out


def _call_block(function: dict[str, Any]) -> str:
    call = {"name": function["name"], "arguments": function["arguments"]}
    return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"


def _with_system_block(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        content = f"{first['content']}\n\n{block}" if first["content"] else block
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]
