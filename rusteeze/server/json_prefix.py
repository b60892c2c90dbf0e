"""An incremental JSON checker: fed one character at a time, it knows which value each character belongs to.

The tool-call parser streams a call's ``arguments`` while the model is still
writing them, so it must know, character by character, whether the text is
still on its way to valid JSON and which member of which object a character
is part of. :class:`JsonPrefixScanner` is that pushdown automaton.

Invariant: after every accepted character the text fed so far is a prefix of
some valid JSON text (numbers are checked against a prefix pattern as they
grow and in full when they end); a character that breaks this raises
:class:`JsonPrefixError` and the scanner accepts nothing more.

Paths: every character belongs to the innermost value that contains it. A
container's brackets, the whitespace, commas and colons between its members
and its object keys belong to the container; a scalar's characters (quotes
included) belong to the scalar. A value's path is the tuple of object keys and
array indices leading to it from the top value, whose path is ``()``.
"""

from __future__ import annotations

import json
import re

_WS = " \t\n\r"
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-?((0|[1-9]\d*)(\.\d*)?([eE][+-]?\d*)?)?")
_ESCAPES = frozenset('"\\/bfnrtu')
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "true", "f": "false", "n": "null"}

# States: what the next character may be.
_VALUE = 0  # a value (after ':' or ',' in an array, or at the start)
_FIRST_VALUE = 1  # a value or ']' (just after '[')
_FIRST_KEY = 2  # a key or '}' (just after '{')
_KEY = 3  # a key (after ',' in an object)
_COLON = 4
_AFTER_VALUE = 5  # ',' or the closing bracket (or, at the top, nothing but whitespace)
_STRING = 6  # inside a string (a key when ``_in_key``)
_NUMBER_TOKEN = 7
_LITERAL = 8


class JsonPrefixError(ValueError):
    """The text can no longer become valid JSON."""


class JsonPrefixScanner:
    """Checks JSON text as it arrives and tells which value each character belongs to.

    Attributes:
        done: the top value is complete (only whitespace may follow).
        closed: after :meth:`feed`, the paths of the values the character completed, innermost
            first. A number completes on the character after it, which itself belongs elsewhere.
    """

    def __init__(self) -> None:
        self._kinds: list[str] = []  # the open containers, "{" or "["
        self._members: list[str | int | None] = []  # per open container: its current key or index
        self._state = _VALUE
        self._in_key = False
        self._escape = 0  # 0: none; -1: after a backslash; n > 0: n hex digits of \\u left
        self._token = ""  # the key, number or literal being read
        self.done = False
        self.closed: list[tuple] = []

    def feed(self, ch: str) -> tuple:
        """Accept one character; return the path of the value it belongs to.

        Raises:
            JsonPrefixError: the character cannot continue valid JSON.
        """
        self.closed = []
        state = self._state
        if state == _STRING:
            return self._string(ch)
        if state == _NUMBER_TOKEN:
            if ch in _NUMBER_CHARS:
                self._token += ch
                if not _NUMBER_PREFIX.fullmatch(self._token):
                    raise JsonPrefixError(f"invalid number {self._token!r}")
                return self._value_path()
            if not _NUMBER.fullmatch(self._token):
                raise JsonPrefixError(f"invalid number {self._token!r}")
            self._end_scalar()  # the number ends here; the character itself comes after it
            number = self.closed
            path = self.feed(ch)
            self.closed = [*number, *self.closed]
            return path
        if state == _LITERAL:
            return self._literal(ch)
        if ch in _WS:
            if self.done or not self._kinds:
                return ()
            return self._container_path()
        if self.done:
            raise JsonPrefixError(f"unexpected {ch!r} after the end of the JSON value")
        if state in (_VALUE, _FIRST_VALUE):
            if state == _FIRST_VALUE and ch == "]":
                return self._close(ch)
            return self._start_value(ch)
        if state in (_FIRST_KEY, _KEY):
            if ch == '"':
                self._state, self._in_key, self._token = _STRING, True, ch
                return self._container_path()
            if state == _FIRST_KEY and ch == "}":
                return self._close(ch)
            raise JsonPrefixError(f"expected an object key, got {ch!r}")
        if state == _COLON:
            if ch != ":":
                raise JsonPrefixError(f"expected ':', got {ch!r}")
            self._state = _VALUE
            return self._container_path()
        # _AFTER_VALUE inside a container
        if ch == ",":
            if self._kinds[-1] == "{":
                self._state = _KEY
            else:
                self._members[-1] += 1  # type: ignore[operator]
                self._state = _VALUE
            return self._container_path()
        return self._close(ch)

    def _value_path(self) -> tuple:
        return tuple(self._members)

    def _container_path(self) -> tuple:
        return tuple(self._members[:-1])

    def _start_value(self, ch: str) -> tuple:
        path = self._value_path()
        if ch in "{[":
            self._kinds.append(ch)
            self._members.append(None if ch == "{" else 0)
            self._state = _FIRST_KEY if ch == "{" else _FIRST_VALUE
        elif ch == '"':
            self._state, self._in_key, self._token = _STRING, False, ""
        elif ch == "-" or ch.isdigit():
            self._state, self._token = _NUMBER_TOKEN, ch
        elif ch in _LITERALS:
            self._state, self._token = _LITERAL, ch
        else:
            raise JsonPrefixError(f"expected a JSON value, got {ch!r}")
        return path

    def _close(self, ch: str) -> tuple:
        expected = "}" if self._kinds[-1] == "{" else "]"
        if ch != expected:
            raise JsonPrefixError(f"expected ',' or {expected!r}, got {ch!r}")
        path = self._container_path()
        self._kinds.pop()
        self._members.pop()
        self._after_value(path)
        return path

    def _after_value(self, path: tuple) -> None:
        self.closed.append(path)
        self._state = _AFTER_VALUE
        if not self._kinds:
            self.done = True

    def _end_scalar(self) -> None:
        self._after_value(self._value_path())

    def _string(self, ch: str) -> tuple:
        path = self._container_path() if self._in_key else self._value_path()
        if self._in_key:
            self._token += ch
        if self._escape == -1:
            if ch not in _ESCAPES:
                raise JsonPrefixError(f"invalid escape '\\{ch}'")
            self._escape = 4 if ch == "u" else 0
        elif self._escape > 0:
            if ch not in _HEX:
                raise JsonPrefixError(f"invalid \\u escape digit {ch!r}")
            self._escape -= 1
        elif ch == "\\":
            self._escape = -1
        elif ch == '"':
            if self._in_key:
                self._members[-1] = json.loads(self._token)
                self._state = _COLON
            else:
                self._end_scalar()
        elif ord(ch) < 0x20:
            raise JsonPrefixError("control character inside a string")
        return path

    def _literal(self, ch: str) -> tuple:
        word = _LITERALS[self._token[0]]
        self._token += ch
        if not word.startswith(self._token):
            raise JsonPrefixError(f"invalid literal {self._token!r}")
        path = self._value_path()
        if self._token == word:
            self._end_scalar()
        return path

    def finish(self) -> bool:
        """End of text: complete a pending top-level number; return whether the JSON value is complete."""
        if self._state == _NUMBER_TOKEN and not self._kinds and _NUMBER.fullmatch(self._token):
            self._end_scalar()
        return self.done
