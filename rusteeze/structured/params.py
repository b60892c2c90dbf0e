"""StructuredOutputsParams: the one constraint a request's output must satisfy.

The names are vLLM's (``json``, ``json_object``, ``regex``, ``choice``,
``grammar``). A request carries at most one kind. Construction validates the
constraint with llguidance (imported only here, only when a constraint is
given), so a bad schema, regex or Lark grammar is an
:class:`~rusteeze.errors.InvalidRequestError` before any work is scheduled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rusteeze.errors import InvalidRequestError

# The schema ``json_object=True`` stands for: any JSON object.
ANY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
KINDS = ("json", "json_object", "regex", "choice", "grammar")


def _fail(kind: str, message: str) -> None:
    raise InvalidRequestError(f"structured_outputs.{kind}: {message}", param=f"structured_outputs.{kind}")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One output constraint, compiled to a token mask at sampling time.

    Exactly one attribute is set.

    Attributes:
        json: a JSON schema, as a dict or a JSON string; the output is a JSON
            value valid against it.
        json_object: True: the output is any JSON object (OpenAI's JSON mode).
        regex: the output matches this regular expression (Rust regex syntax), whole.
        choice: the output is exactly one of these strings.
        grammar: a Lark grammar (llguidance's dialect); the output derives from ``start``.

    Raises:
        InvalidRequestError: none or several kinds are set, or the schema,
            regex, choice list or grammar is invalid (the message names the problem).
    """

    json: dict[str, Any] | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                f"structured_outputs: set exactly one of {', '.join(KINDS)}; got {', '.join(given) or 'none'}",
                param="structured_outputs",
            )
        self._check_types()
        error = _validate_grammar(self.llguidance_grammar())
        if error:
            _fail(self.kind, _one_line(error))

    @classmethod
    def from_value(cls, value: Any) -> StructuredOutputsParams:
        """Build from a StructuredOutputsParams or a mapping of its fields.

        Raises:
            InvalidRequestError: the value is neither, names an unknown field, or is invalid.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"structured_outputs: must be an object with one of {', '.join(KINDS)}, got {value!r}",
                param="structured_outputs",
            )
        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise InvalidRequestError(
                f"structured_outputs: unknown field {unknown[0]!r}; expected one of {', '.join(KINDS)}",
                param="structured_outputs",
            )
        return cls(**value)

    def _check_types(self) -> None:
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as e:
                    _fail("json", f"the schema is not valid JSON ({e})")
            if not isinstance(schema, (dict, bool)):
                _fail("json", f"a JSON schema must be an object, got {type(schema).__name__}")
        if self.json_object is not None and self.json_object is not True:
            _fail("json_object", f"must be true when given, got {self.json_object!r}")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            _fail("regex", f"must be a non-empty string, got {self.regex!r}")
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple))
            or not self.choice
            or not all(isinstance(c, str) and c for c in self.choice)
        ):
            _fail("choice", f"must be a non-empty list of non-empty strings, got {self.choice!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            _fail("grammar", f"must be a non-empty Lark grammar string, got {self.grammar!r}")

    @property
    def kind(self) -> str:
        """The name of the one field that is set (``"json"``, ``"regex"``, ...)."""
        return next(name for name in KINDS if getattr(self, name) is not None)

    @property
    def schema(self) -> dict[str, Any] | bool | None:
        """The JSON schema the output obeys (``json`` or ``json_object``), else None."""
        if self.json_object:
            return ANY_OBJECT_SCHEMA
        if self.json is None:
            return None
        return json.loads(self.json) if isinstance(self.json, str) else self.json

    def cache_key(self) -> tuple[str, str]:
        """A canonical, hashable spelling of the constraint: equal constraints share a compiled grammar."""
        schema = self.schema
        if schema is not None:
            return ("json", json.dumps(_canonical(schema), separators=(",", ":")))
        if self.choice is not None:
            return ("choice", json.dumps(list(self.choice)))
        return (self.kind, self.regex if self.regex is not None else str(self.grammar))

    def llguidance_grammar(self) -> str:
        """The constraint as an llguidance grammar definition (a JSON string)."""
        from llguidance import LLMatcher

        kind, text = self.cache_key()
        if kind == "json":
            return LLMatcher.grammar_from_json_schema(text)
        if kind == "choice":
            return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in json.loads(text)))
        if kind == "regex":
            return LLMatcher.grammar_from_regex(text)
        return LLMatcher.grammar_from_lark(text)


def _canonical(value: Any, ordered: bool = False) -> Any:
    """A schema with its keys sorted, except the members of ``properties``: llguidance writes an
    object's properties in the order the schema lists them, so that order is part of the constraint."""
    if isinstance(value, dict):
        items = value.items() if ordered else sorted(value.items())
        return {k: _canonical(v, ordered=k == "properties" and not ordered) for k, v in items}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _validate_grammar(grammar: str) -> str:
    """llguidance's verdict on a grammar without a tokenizer: "" when valid, else the error."""
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error and messages else ""


def _one_line(message: str) -> str:
    """llguidance's multi-line error on one line, without its echo of the generated grammar."""
    lines = []
    for line in message.strip().splitlines():
        if re.match(r"\s*\d+ \|", line):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or message.strip()
