"""Parsed tool calls in OpenAI's shapes: ``message.tool_calls`` and streamed ``delta.tool_calls``.

``finish_reason`` becomes ``"tool_calls"`` when a completion that stopped by
itself (``"stop"``) made calls; a completion cut by ``max_tokens`` keeps
``"length"`` (its last call may be incomplete). With ``parallel_tool_calls``
false only the first call is answered (as vLLM does when the model writes more).
"""

from __future__ import annotations

from typing import Any

from rusteeze.server.tool_parser import ParsedDelta, ToolCallParser, parse_tool_calls
from rusteeze.server.tools import ToolRequest


def tool_finish_reason(reason: str | None, made_calls: bool) -> str | None:
    """The OpenAI finish reason of a completion that may have made calls."""
    return "tool_calls" if made_calls and reason == "stop" else reason


def tool_message(text: str, tools: ToolRequest) -> tuple[dict[str, Any], bool]:
    """The assistant message of a whole completion: ``(message, made calls)``.

    Args:
        text: the completion's text.
        tools: the request's tools (forced or not, names, parallel calls or not).
    """
    content, calls = parse_tool_calls(text, tools.forced, tools.names)
    calls = calls if tools.parallel else calls[:1]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    return message, bool(calls)


class ToolDeltaStream:
    """Turns one choice's text deltas into chat ``delta`` fields (content and tool call pieces)."""

    def __init__(self, tools: ToolRequest) -> None:
        self.parser = ToolCallParser(tools.forced, tools.names)
        self.parallel = tools.parallel

    @property
    def made_calls(self) -> bool:
        """At least one call has been announced."""
        return bool(self.parser.calls)

    def delta(self, text: str, final: bool) -> dict[str, Any]:
        """The delta fields for ``text`` (the choice's new text); ``final`` flushes what was held."""
        parsed = self.parser.feed(text)
        if final:
            end = self.parser.finish()
            parsed.content += end.content
            for piece in end.calls:
                parsed.add_call(piece)
            parsed.seal()
        if not self.parallel:
            parsed.calls = [piece for piece in parsed.calls if piece.index == 0]
        return _delta_fields(parsed)


def _delta_fields(parsed: ParsedDelta) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if parsed.content:
        fields["content"] = parsed.content
    calls = []
    for piece in parsed.calls:
        if piece.id is not None:
            function = {"name": piece.name, "arguments": piece.arguments}
            calls.append({"index": piece.index, "id": piece.id, "type": "function", "function": function})
        else:
            calls.append({"index": piece.index, "function": {"arguments": piece.arguments}})
    if calls:
        fields["tool_calls"] = calls
    return fields
