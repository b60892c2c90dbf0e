"""Tool calls out of a model's text, whole or as it streams.

What the parser reads:

* Hermes-style blocks anywhere in the text: ``<tool_call>{"name": "f",
  "arguments": {...}}</tool_call>`` (Qwen2.5, Hermes, and our fallback prompt
  for templates without tools). The closing tag may be missing at the end of
  the output; ``"parameters"`` is read as ``"arguments"``, and arguments given
  as a JSON string are decoded.
* With ``forced=True`` (``tool_choice`` "required" or a named function), also
  a bare JSON call object or array of them when the output starts with ``{``
  or ``[`` (after whitespace): what the grammar of a forced call produces.
* Given the tools' ``names`` (``"auto"``), also a bare call object that starts
  the output and names one of them, with no keys but ``name``, ``arguments`` /
  ``parameters`` and ``type``: the format Llama 3.1/3.2 templates ask for,
  ``{"name": "f", "parameters": {...}}``. Any other JSON is content.

Invariants:

* The result depends only on the text, never on how it was split into
  deltas: the deltas of :meth:`ToolCallParser.feed` and :meth:`~ToolCallParser.finish`
  join to the same content and calls as the whole text fed at once.
* Text that holds no call comes back as content unchanged. With calls, the
  content is the text outside them, except the whitespace that separates a
  call from the start or the end of the reply (a reply of calls alone has
  empty content).
* A call is announced (id and name) as soon as its name is complete, and its
  arguments stream as they arrive. A block that breaks before its name is
  complete is content, verbatim; one that breaks after keeps its name and the
  arguments up to the break (the same when the output is cut by max_tokens).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from rusteeze.server.json_prefix import JsonPrefixError, JsonPrefixScanner

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_WS = " \t\n\r"
_ARGUMENT_KEYS = ("arguments", "parameters")
_STRICT_KEYS = frozenset({"name", "type", *_ARGUMENT_KEYS})


def new_call_id() -> str:
    """A fresh tool call id, ``call_`` and 24 hex digits."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCallDelta:
    """A piece of one call: the first piece of a call has its id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedDelta:
    """What one :meth:`ToolCallParser.feed` adds: content text and call pieces (merged per call)."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)
    _tail: list[str] = field(default_factory=list, repr=False)  # more arguments of the last piece

    def add_call(self, piece: ToolCallDelta) -> None:
        """Append a piece; one that continues the last piece's call is merged into it."""
        last = self.calls[-1] if self.calls else None
        if last is not None and last.index == piece.index and piece.id is None:
            self._tail.append(piece.arguments)
        else:
            self.seal()
            self.calls.append(piece)

    def seal(self) -> ParsedDelta:
        """Join the merged arguments into the last piece (pieces are joined once, not per character)."""
        if self._tail:
            self.calls[-1].arguments += "".join(self._tail)
            self._tail.clear()
        return self


class ToolCall:
    """One parsed call: ``arguments`` is its JSON text (so far, while it streams)."""

    def __init__(self, id: str, name: str) -> None:
        self.id, self.name = id, name
        self._parts: list[str] = []

    @property
    def arguments(self) -> str:
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def add(self, text: str) -> None:
        self._parts.append(text)


class _CallReader:
    """Reads one call object (at path ``base`` of the scanned JSON); announces it once its name is complete.

    Args:
        base: the object's path in the scanned JSON.
        names: when given, the only names a call may have, and its only keys are
            ``_STRICT_KEYS`` until the name is known (a bare object that is not a call breaks early).
    """

    def __init__(self, base: tuple, names: frozenset[str] | None = None) -> None:
        self.base = base
        self.names = names
        self.name_text: list[str] = []  # the name's JSON text
        self.call: ToolCall | None = None  # set when announced
        self.index = -1
        self.args_key: str | None = None  # "arguments" or "parameters", whichever came first
        self.args_text: list[str] = []  # the arguments' JSON text so far
        self.args_is_string = False  # the arguments are a JSON string (decoded when complete)
        self.args_closed = False

    def on_char(self, ch: str, path: tuple, closed: list[tuple], out: ParsedDelta, index: int) -> ToolCall | None:
        """Take one scanned character; return the call when this character announces it.

        Raises:
            JsonPrefixError: the object cannot be a call (a name that is not a string, no name).
        """
        announced = None
        rel = path[len(self.base) :] if path[: len(self.base)] == self.base else ()
        if rel and self.names is not None and self.call is None and rel[0] not in _STRICT_KEYS:
            raise JsonPrefixError(f"{rel[0]!r} is not a key of a call")
        if rel and rel[0] == "name" and self.call is None:
            self.name_text.append(ch)
        elif rel and rel[0] in _ARGUMENT_KEYS and self.args_key in (None, rel[0]) and not self.args_closed:
            if self.args_key is None:
                self.args_key, self.args_is_string = rel[0], ch == '"'
            self.args_text.append(ch)
            if self.call is not None and not self.args_is_string:
                self._add_arguments(ch, out)
        for done in closed:
            if done == (*self.base, "name") and self.call is None:
                announced = self._announce(out, index)
            elif self.args_key is not None and done == (*self.base, self.args_key) and not self.args_closed:
                self.args_closed = True
                if self.call is not None and self.args_is_string:
                    self._add_arguments(json.loads("".join(self.args_text)), out)
            elif done == self.base:
                if self.call is None:
                    raise JsonPrefixError('a call needs a "name"')
                if self.args_key is None:
                    self._add_arguments("{}", out)
        return announced

    def _add_arguments(self, text: str, out: ParsedDelta) -> None:
        assert self.call is not None
        self.call.add(text)
        out.add_call(ToolCallDelta(self.index, arguments=text))

    def _announce(self, out: ParsedDelta, index: int) -> ToolCall:
        name_text = "".join(self.name_text)
        name = json.loads(name_text)
        if not isinstance(name, str) or not name:
            raise JsonPrefixError(f'a call\'s "name" must be a non-empty string, got {name_text}')
        if self.names is not None and name not in self.names:
            raise JsonPrefixError(f"{name!r} is not one of the tools")
        self.call, self.index = ToolCall(new_call_id(), name), index
        out.add_call(ToolCallDelta(index, self.call.id, name))
        if self.args_is_string:
            if self.args_closed:
                self._add_arguments(json.loads("".join(self.args_text)), out)
        elif self.args_text:
            self._add_arguments("".join(self.args_text), out)
        return self.call


class ToolCallParser:
    """Splits a model's output into content and tool calls, incrementally.

    Args:
        forced: the request forces a call (``tool_choice`` "required" or named): a bare JSON
            call object or array at the start of the output is read as calls too.
        names: the tools' names: a bare call object of one of them at the start of the
            output is read as a call too (see the module's docstring).

    Attributes:
        calls: the calls announced so far, in order; their ``arguments`` grow as they stream.
    """

    def __init__(self, forced: bool = False, names: frozenset[str] | None = None) -> None:
        self.calls: list[ToolCall] = []
        self._content_parts: list[str] = []
        self._forced = forced
        self._names = None if forced else names  # a bare object must name one of these (None: any name)
        self._mode = "start" if forced or names else "text"  # start | text | call | json | close | skip | done
        self._held = ""  # raw text not decided yet: leading whitespace, or a possible tag prefix
        self._ws = ""  # trailing content whitespace, held until we know whether a call follows it
        self._has_content = False  # some non-whitespace content was emitted
        self._raw: list[str] = []  # the current block's raw text, replayed as content when it is not a call
        self._scanner = JsonPrefixScanner()
        self._array: bool | None = None  # the current block is an array of calls
        self._readers: dict[int | None, _CallReader] = {}  # the current block's calls, by array index

    def feed(self, text: str) -> ParsedDelta:
        """Add a text delta; return the content and call pieces it completes."""
        out = ParsedDelta()
        self._feed(text, out)
        self._content_parts.append(out.content)
        return out.seal()

    def finish(self) -> ParsedDelta:
        """End of the output: decide what was held back; return the last pieces."""
        out = ParsedDelta()
        while self._mode in ("call", "json") and not self._block_announced():
            self._feed(self._not_a_call(out), out)
        if self._mode in ("start", "text"):
            self._content(self._held, out)
        if not self.calls:
            out.content += self._ws
        self._mode, self._held, self._ws = "done", "", ""
        self._content_parts.append(out.content)
        return out.seal()

    @property
    def content(self) -> str:
        """The content emitted so far."""
        if len(self._content_parts) > 1:
            self._content_parts[:] = ["".join(self._content_parts)]
        return self._content_parts[0] if self._content_parts else ""

    # ------------------------------------------------------------ internals
    def _feed(self, text: str, out: ParsedDelta) -> None:
        steps = {"start": self._start, "text": self._text, "call": self._json, "json": self._json}
        steps.update(close=self._close, skip=self._skip)
        while text and self._mode != "done":
            text = steps[self._mode](text, out)

    def _content(self, text: str, out: ParsedDelta) -> None:
        if self.calls and not self._has_content:
            text = text.lstrip(_WS)  # between the start of the reply and a call
        text = self._ws + text
        body = text.rstrip(_WS)
        self._ws = text[len(body) :]
        if body:
            out.content += body
            self._has_content = True

    def _block_announced(self) -> bool:
        return any(r.call is not None for r in self._readers.values())

    def _begin_block(self, mode: str, raw: str) -> None:
        self._mode, self._raw, self._held = mode, [raw], ""
        self._scanner, self._array, self._readers = JsonPrefixScanner(), None, {}

    def _end_block(self) -> None:
        self._mode, self._held, self._readers = "text", "", {}

    def _start(self, text: str, out: ParsedDelta) -> str:
        body = text.lstrip(_WS)
        self._held += text[: len(text) - len(body)]
        if not body:
            return ""
        if body[0] == "{" or (body[0] == "[" and self._forced):
            self._begin_block("json", self._held)
            return body
        self._mode, body, self._held = "text", self._held + body, ""
        return body

    def _text(self, text: str, out: ParsedDelta) -> str:
        buf, self._held = self._held + text, ""
        i = buf.find(OPEN_TAG)
        if i < 0:
            keep = next((k for k in range(min(len(OPEN_TAG) - 1, len(buf)), 0, -1) if buf.endswith(OPEN_TAG[:k])), 0)
            self._held = buf[len(buf) - keep :]
            self._content(buf[: len(buf) - keep], out)
            return ""
        self._content(buf[:i], out)
        self._begin_block("call", "")
        return buf[i + len(OPEN_TAG) :]

    def _json(self, text: str, out: ParsedDelta) -> str:
        scanner = self._scanner
        for pos, ch in enumerate(text):
            if scanner.done and ch not in _WS and self._mode == "call":
                self._mode = "close"
                return text[pos:]
            if scanner.done and ch not in _WS and not self._forced and self._block_announced():
                self._end_block()  # text after a bare call (auto) is content
                return text[pos:]
            self._raw.append(ch)
            try:
                path = scanner.feed(ch)
                self._route(ch, path, scanner.closed, out)
            except JsonPrefixError:
                return self._broken(out) + text[pos + 1 :]
        return ""

    def _route(self, ch: str, path: tuple, closed: list[tuple], out: ParsedDelta) -> None:
        if self._array is None and ch not in _WS:
            self._array = ch == "["
        if self._array and not path:
            return  # the array's own brackets, commas and whitespace
        key, base = (path[0], path[:1]) if self._array else (None, ())
        reader = self._readers.get(key)
        if reader is None:
            if path == base and ch in _WS:
                return
            if path != base or ch != "{":
                raise JsonPrefixError("a call must be a JSON object")
            strict = self._names if self._mode == "json" else None
            reader = self._readers[key] = _CallReader(base, strict)
        call = reader.on_char(ch, path, closed, out, len(self.calls))
        if call is not None:
            self.calls.append(call)
            if not self._has_content:
                self._ws = ""  # whitespace between the start of the reply and a call is not content

    def _broken(self, out: ParsedDelta) -> str:
        """The block cannot be (more of) a call: keep its calls, or give its text back as content."""
        if not self._block_announced():
            return self._not_a_call(out)
        if self._mode == "call":
            self._mode, self._held = "skip", ""
        else:
            self._mode = "done"  # a forced call's JSON broke: what follows is not part of the reply
        return ""

    def _not_a_call(self, out: ParsedDelta) -> str:
        """Leave a block that holds no call: its text (to replay as text) after the tag, as content."""
        literal, raw = (OPEN_TAG if self._mode == "call" else ""), "".join(self._raw)
        self._mode, self._held, self._readers = "text", "", {}
        self._content(literal, out)
        return raw

    def _close(self, text: str, out: ParsedDelta) -> str:
        for pos, ch in enumerate(text):
            if not self._held and ch in _WS:
                continue
            candidate = self._held + ch
            if not CLOSE_TAG.startswith(candidate):  # no closing tag: the call ended anyway
                held = self._held
                self._end_block()
                return held + text[pos:]
            self._held = candidate
            if candidate == CLOSE_TAG:
                self._end_block()
                return text[pos + 1 :]
        return ""

    def _skip(self, text: str, out: ParsedDelta) -> str:
        buf = self._held + text
        i = buf.find(CLOSE_TAG)
        if i >= 0:
            self._end_block()
            return buf[i + len(CLOSE_TAG) :]
        keep = next((k for k in range(min(len(CLOSE_TAG) - 1, len(buf)), 0, -1) if buf.endswith(CLOSE_TAG[:k])), 0)
        self._held = buf[len(buf) - keep :]
        return ""


def parse_tool_calls(
    text: str, forced: bool = False, names: frozenset[str] | None = None
) -> tuple[str | None, list[ToolCall]]:
    """Parse a whole output: ``(content, calls)``; content is None when there are calls and no text.

    ``forced`` and ``names`` are :class:`ToolCallParser`'s.
    """
    parser = ToolCallParser(forced, names)
    parser.feed(text)
    parser.finish()
    if parser.calls and not parser.content:
        return None, parser.calls
    return parser.content, parser.calls
