"""``response_format`` and the ``structured_outputs`` extension → one StructuredOutputsParams.

OpenAI's ``response_format``: ``{"type": "text"}`` (no constraint),
``{"type": "json_object"}`` (any JSON object) and ``{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}`` (the output is valid against
``schema``; it is always enforced, whatever ``strict`` says). vLLM's extension
body field ``structured_outputs`` takes ``json``, ``json_object``, ``regex``,
``choice`` or ``grammar``, and its older top-level ``guided_json``,
``guided_regex``, ``guided_choice`` and ``guided_grammar`` fields are read as
the same. A request may carry one constraint; every error is a 400 naming the
field.
"""

from __future__ import annotations

from typing import Any

from rusteeze.errors import InvalidRequestError
from rusteeze.server.http import APIError, bad_request
from rusteeze.structured import StructuredOutputsParams

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_FORMAT_TYPES = ("text", "json_object", "json_schema")


def structured_outputs_of(body: dict[str, Any]) -> StructuredOutputsParams | None:
    """The request's output constraint (None: free text).

    Raises:
        APIError: 400 naming the field: an unknown ``response_format.type``, a
            missing or invalid schema, regex, choice list or grammar, or two
            constraints in one request.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        found.append(("response_format", fmt))
    extension = body.get("structured_outputs")
    if extension is not None:
        if not isinstance(extension, dict):
            raise bad_request(f"structured_outputs must be an object, got {extension!r}", param="structured_outputs")
        found.append(("structured_outputs", extension))
    for name, kind in _GUIDED.items():
        if body.get(name) is not None:
            found.append((name, {kind: body[name]}))
    if not found:
        return None
    if len(found) > 1:
        raise bad_request(
            f"{found[1][0]} cannot be combined with {found[0][0]}: give one output constraint", param=found[1][0]
        )
    where, fields = found[0]
    try:
        return StructuredOutputsParams.from_value(fields)
    except InvalidRequestError as e:
        raise _renamed(e, where) from None


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """``response_format`` as StructuredOutputsParams fields (None: plain text)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad_request(f"response_format must be an object, got {fmt!r}", param="response_format")
    kind = fmt.get("type")
    if kind not in _FORMAT_TYPES:
        raise bad_request(
            f"response_format.type must be one of {', '.join(_FORMAT_TYPES)}, got {kind!r}",
            param="response_format.type",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise bad_request(
            'response_format.json_schema must be an object with "name" and "schema"',
            param="response_format.json_schema",
        )
    for name, types in (("name", str), ("strict", bool), ("description", str)):
        if spec.get(name) is not None and not isinstance(spec[name], types):
            where = f"response_format.json_schema.{name}"
            raise bad_request(f"{where} must be a {types.__name__}, got {spec[name]!r}", param=where)
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(
            f"response_format.json_schema.schema must be a JSON schema object, got {schema!r}",
            param="response_format.json_schema.schema",
        )
    return {"json": schema}


def _renamed(error: InvalidRequestError, where: str) -> APIError:
    """A StructuredOutputsParams error re-addressed to the body field the client wrote."""
    message, param = str(error), error.param or "structured_outputs"
    if where == "response_format":
        message = message.replace("structured_outputs.json:", "response_format.json_schema.schema:", 1)
        message = message.replace("structured_outputs.json_object:", "response_format:", 1)
        param = "response_format.json_schema.schema" if param.endswith(".json") else "response_format"
    elif where in _GUIDED:
        message = message.replace(f"structured_outputs.{_GUIDED[where]}", where, 1)
        param = where
    return bad_request(message, param=param)
