"""OpenAI tool calling on /v1/chat/completions: ``tools``, ``tool_choice`` and tool messages, validated.

``tool_choice`` decides what the server does with the tools:

* ``"none"``: the tools are still given to a chat template that uses them (as
  vLLM does by default), but the output is not parsed: it is all content.
* ``"auto"`` (the default when there are tools): the model decides; calls it
  writes (``<tool_call>`` blocks, or a bare call object of a known tool; see
  :mod:`rusteeze.server.tool_parser`) are parsed out of the output.
* ``"required"`` or ``{"type": "function", "function": {"name": ...}}``: the
  output is constrained by a JSON schema built from the tools (an array of
  ``{"name", "arguments"}`` call objects, or the one named call), so it always
  parses and its arguments are valid against the tool's ``parameters``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.server.http import bad_request
from rusteeze.server.tool_parser import CLOSE_TAG, OPEN_TAG
from rusteeze.structured.params import StructuredOutputsParams
from rusteeze.tokenizer import Tokenizer

# OpenAI's function names (letters, digits, '_' and '-', at most 64), plus '.' and ':' (namespaced names).
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CHOICES = ("none", "auto", "required")
# llguidance's JSON layout for forced calls: single spaces after ':' and ',' and no other whitespace
# (by default any whitespace is allowed, and a weak model can fill max_tokens with it).
_COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one chat request.

    Attributes:
        tools: ``[{"type": "function", "function": {"name", "description"?, "parameters"}}]``,
            ``parameters`` defaulting to an object schema without properties.
        choice: "none", "auto", "required", or "function" (a named function is forced).
        function: the forced function's name when ``choice == "function"``.
        parallel: the model may make several calls (``parallel_tool_calls``).
    """

    tools: list[dict[str, Any]]
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True

    @property
    def parses(self) -> bool:
        """Calls are parsed out of the output."""
        return self.choice != "none"

    @property
    def names(self) -> frozenset[str]:
        """The tools' function names."""
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def forced(self) -> bool:
        """The output must be a call (the call schema constrains it)."""
        return self.choice in ("required", "function")

    def call_schema(self) -> dict[str, Any]:
        """The JSON schema a forced output satisfies: the named call object, or an array of calls.

        Properties are listed name first, so the name is written (and streamed) before the arguments.
        """
        tools = [t for t in self.tools if self.function in (None, t["function"]["name"])]
        defs: dict[str, Any] = {}
        calls = [_call_object(t["function"], defs) for t in tools]
        if self.choice == "function":
            schema = calls[0]
        else:
            schema = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}, "minItems": 1}
            if not self.parallel:
                schema["maxItems"] = 1
        if defs:
            schema["$defs"] = defs
        return {**schema, "x-guidance": _COMPACT_JSON}

    def constrain(self, params: SamplingParams) -> SamplingParams:
        """``params`` with the call schema as its structured output when a call is forced.

        Raises:
            APIError: 400 when the request has its own output constraint (``response_format``),
                or a tool's parameters are not a schema the constraint can compile (naming the tool).
        """
        if not self.forced:
            return params
        if params.structured_outputs is not None:
            raise bad_request(
                "response_format cannot be combined with tool_choice 'required' or a named function: "
                "the call's own schema constrains the output",
                param="response_format",
            )
        try:
            constraint = StructuredOutputsParams(json=self.call_schema())
        except InvalidRequestError as e:
            self._name_the_bad_schema()
            raise bad_request(f"tools: the call schema cannot be compiled: {e}", param="tools") from None
        return dataclasses.replace(params, structured_outputs=constraint)

    def _name_the_bad_schema(self) -> None:
        """Raise the 400 of the first tool whose parameters do not compile on their own."""
        for i, tool in enumerate(self.tools):
            try:
                StructuredOutputsParams(json=tool["function"]["parameters"])
            except InvalidRequestError as e:
                where = f"tools[{i}].function.parameters"
                raise bad_request(f"{where} is not a usable JSON schema: {e}", param=where) from None

    def keep_call_tags(self, params: SamplingParams, tokenizer: Tokenizer) -> SamplingParams:
        """``params`` that keep special tokens in the text when the call tags are special tokens.

        Decoding drops special tokens by default; a vocabulary that has ``<tool_call>`` as one
        would hide the calls from the parser (vLLM's Hermes parser makes the same adjustment).
        """
        if not self.parses or not params.skip_special_tokens:
            return params
        tags = {tokenizer.token_to_id(OPEN_TAG), tokenizer.token_to_id(CLOSE_TAG)} - {None}
        if tags & tokenizer.special_token_ids():
            return dataclasses.replace(params, skip_special_tokens=False)
        return params


def _call_object(function: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One call's schema.

    Parameters with local ``$ref``s (``#/$defs/X``, ``#/properties/a``, ``#``) move whole to the
    root's ``$defs`` under the tool's name, their refs rebased there, so every ref still points
    where it did.
    """
    name = function["name"]
    parameters = function["parameters"]
    if _has_local_refs(parameters):
        defs[name] = _rebase_refs(parameters, f"#/$defs/{name}")
        parameters = {"$ref": f"#/$defs/{name}"}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _has_local_refs(value: Any) -> bool:
    if isinstance(value, dict):
        ref = value.get("$ref")
        return (isinstance(ref, str) and ref.startswith("#")) or any(_has_local_refs(v) for v in value.values())
    return isinstance(value, list) and any(_has_local_refs(v) for v in value)


def _rebase_refs(value: Any, root: str) -> Any:
    """Every local ``$ref`` in ``value`` (``#...``) made relative to ``root`` (a JSON pointer ref)."""
    if isinstance(value, dict):
        out = {k: _rebase_refs(v, root) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = root + ref[1:]
        return out
    if isinstance(value, list):
        return [_rebase_refs(v, root) for v in value]
    return value


def parse_tool_request(body: dict[str, Any]) -> ToolRequest | None:
    """Validate ``tools``, ``tool_choice`` and ``parallel_tool_calls``; None when there are no tools.

    Raises:
        APIError: 400 naming the field (``tools[2].function.name``, ``tool_choice``...).
    """
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise bad_request(f"{legacy} is not supported: use tools and tool_choice", param=legacy)
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise bad_request(f"tools must be an array of tool objects, got {type(raw).__name__}", param="tools")
    tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(raw or [])]
    names = [t["function"]["name"] for t in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise bad_request(f"tools[{i}].function.name: {name!r} is defined twice", param=f"tools[{i}].function.name")
    choice, function = _choice(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request(f"parallel_tool_calls must be a boolean, got {parallel!r}", param="parallel_tool_calls")
    if not tools:
        return None
    return ToolRequest(tools, choice or "auto", function, parallel is not False)


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise bad_request(f"{where} must be an object with type and function", param=where)
    if tool.get("type") != "function":
        raise bad_request(f"{where}.type must be 'function', got {tool.get('type')!r}", param=f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad_request(f"{where}.function must be an object with a name", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad_request(
            f"{where}.function.name must be 1 to 64 letters, digits, '_', '-', '.' or ':', got {name!r}",
            param=f"{where}.function.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"{where}.function.description must be a string", param=f"{where}.function.description")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = EMPTY_PARAMETERS
    elif not isinstance(parameters, dict):
        raise bad_request(
            f"{where}.function.parameters must be a JSON schema object, got {type(parameters).__name__}",
            param=f"{where}.function.parameters",
        )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad_request(f"{where}.function.strict must be a boolean", param=f"{where}.function.strict")
    out: dict[str, Any] = {"name": name}
    if description is not None:
        out["description"] = description
    out["parameters"] = parameters
    if strict is not None:
        out["strict"] = strict
    return {"type": "function", "function": out}


def _choice(choice: Any, names: list[str]) -> tuple[str | None, str | None]:
    """(choice, forced function name) of ``tool_choice``."""
    if choice is None:
        return None, None
    if isinstance(choice, str):
        if choice not in _CHOICES:
            raise bad_request(
                f"tool_choice must be one of {', '.join(_CHOICES)} or a named function, got {choice!r}",
                param="tool_choice",
            )
        if choice == "required" and not names:
            raise bad_request("tool_choice 'required' needs tools", param="tool_choice")
        return choice, None
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(function, dict):
        raise bad_request(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    name = function.get("name")
    if name not in names:
        known = ", ".join(names) or "no tools were given"
        raise bad_request(
            f"tool_choice names function {name!r}, which is not in tools ({known})", param="tool_choice.function.name"
        )
    return "function", name


def tool_message_fields(message: dict[str, Any], role: str, where: str) -> dict[str, Any]:
    """The tool fields of one chat message, checked: an assistant's ``tool_calls``, a tool's ``tool_call_id``.

    Call arguments become JSON values (templates write them with ``tojson``, as in transformers).

    Raises:
        APIError: 400 naming the field (``messages[3].tool_calls[0].function.arguments``...).
    """
    out: dict[str, Any] = {}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(
                f"{where}.tool_call_id must be the id of the call this tool message answers, got {call_id!r}",
                param=f"{where}.tool_call_id",
            )
        out["tool_call_id"] = call_id
    calls = message.get("tool_calls")
    if calls is None or calls == []:
        return out
    if role != "assistant":
        raise bad_request(f"{where}.tool_calls: only assistant messages carry tool calls", param=f"{where}.tool_calls")
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls must be an array of calls", param=f"{where}.tool_calls")
    out["tool_calls"] = [_message_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    return out


def _message_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise bad_request(f"{where} must be an object with a function", param=where)
    if call.get("type", "function") != "function":
        raise bad_request(f"{where}.type must be 'function', got {call.get('type')!r}", param=f"{where}.type")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise bad_request(f"{where}.id must be a string", param=f"{where}.id")
    name = call["function"].get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.function.name must be a non-empty string", param=f"{where}.function.name")
    arguments = call["function"].get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            where_args = f"{where}.function.arguments"
            raise bad_request(f"{where_args} must be a JSON text: {e}", param=where_args) from None
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": call_id, **out} if call_id is not None else out
