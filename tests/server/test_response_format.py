"""response_format and the structured_outputs extension: what each asks for, and a 400 naming the field."""

import pytest

from rusteeze.server.http import APIError
from rusteeze.server.protocol import parse_chat, parse_completion
from rusteeze.structured import StructuredOutputsParams

USER = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, StructuredOutputsParams(json_object=True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": SCHEMA, "strict": True},
                }
            },
            StructuredOutputsParams(json=SCHEMA),
        ),
        ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutputsParams(regex="[0-9]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, StructuredOutputsParams(choice=["a", "b"])),
        ({"structured_outputs": {"grammar": 'start: "x"'}}, StructuredOutputsParams(grammar='start: "x"')),
        ({"structured_outputs": {"json_object": True}}, StructuredOutputsParams(json_object=True)),
        ({"guided_json": SCHEMA}, StructuredOutputsParams(json=SCHEMA)),
        ({"guided_choice": ["yes", "no"]}, StructuredOutputsParams(choice=["yes", "no"])),
    ],
)
def test_chat_and_completions_carry_the_constraint(fields, expected):
    assert parse_chat({"messages": USER, **fields}).params.structured_outputs == expected
    assert parse_completion({"prompt": "x", **fields}).params.structured_outputs == expected


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"response_format": "json"}, "response_format", "must be an object"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", '"schema"'),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
            "response_format.json_schema.schema",
            "must be a JSON schema object",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": 3, "schema": SCHEMA}}},
            "response_format.json_schema.name",
            "must be a str",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "nope"}}}},
            "response_format.json_schema.schema",
            "Invalid type: nope",
        ),
        ({"structured_outputs": {"regex": "(a"}}, "structured_outputs.regex", "regex"),
        ({"structured_outputs": {"grammar": "start: missing"}}, "structured_outputs.grammar", "unknown name"),
        ({"structured_outputs": {"choice": "a"}}, "structured_outputs.choice", "list"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"json_schema": {}}}, "structured_outputs", "unknown field"),
        ({"structured_outputs": []}, "structured_outputs", "must be an object"),
        ({"guided_regex": "[z"}, "guided_regex", "guided_regex"),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
            "cannot be combined with response_format",
        ),
    ],
)
def test_bad_constraints_are_a_400_naming_the_field(fields, param, needle):
    for parse, base in ((parse_chat, {"messages": USER}), (parse_completion, {"prompt": "x"})):
        with pytest.raises(APIError) as info:
            parse({**base, **fields})
        assert info.value.status == 400
        assert info.value.param == param
        assert needle in info.value.message
