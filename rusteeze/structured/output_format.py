"""Ollama's ``format`` for the CLI: ``json``, a JSON schema file, or a schema written inline.

``rusteeze chat --format json`` (any JSON object), ``--format schema.json`` (a file
holding a JSON schema), ``--format '{"type": "object", ...}'`` (the schema itself),
the ``/format`` chat command and ``format`` in the ``[chat]`` table all go through
:func:`parse_output_format`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rusteeze.errors import InvalidRequestError
from rusteeze.structured.params import StructuredOutputsParams


def parse_output_format(value: str) -> StructuredOutputsParams:
    """The constraint a ``format`` value stands for.

    Args:
        value: ``"json"``, a path to a JSON schema file, or a JSON schema object as text.

    Raises:
        InvalidRequestError: (param ``format``) the file cannot be read or is not
            JSON, or the schema is not one llguidance can enforce (one line).
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f'format: must be "json" or a JSON schema file, got {value!r}', param="format")
    text = value.strip()
    if text.lower() == "json":
        return StructuredOutputsParams(json_object=True)
    where = "the inline schema"
    if not text.startswith("{"):
        where = repr(text)
        try:
            text = Path(text).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InvalidRequestError(
                f'format: cannot read the schema file {where}: {reason} (give "json" or a JSON schema file)',
                param="format",
            ) from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"format: {where} is not valid JSON: {e}", param="format") from None
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            f"format: {where} must hold a JSON schema object, got {type(schema).__name__}", param="format"
        )
    try:
        return StructuredOutputsParams(json=schema)
    except InvalidRequestError as e:
        message = str(e).removeprefix("structured_outputs.json: ")
        raise InvalidRequestError(f"format: {where} is not a usable JSON schema: {message}", param="format") from None
