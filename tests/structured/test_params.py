"""StructuredOutputsParams: exactly one kind, validated by llguidance, canonical cache keys."""

import pytest

from rusteeze import SamplingParams, StructuredOutputsParams
from rusteeze.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("kwargs", "param", "needle"),
    [
        ({}, "structured_outputs", "got none"),
        ({"regex": "a", "choice": ["b"]}, "structured_outputs", "got regex, choice"),
        ({"json": {"type": "foo"}}, "structured_outputs.json", "Invalid type: foo"),
        ({"json": "{not json"}, "structured_outputs.json", "not valid JSON"),
        ({"json": "[1, 2]"}, "structured_outputs.json", "must be an object"),
        ({"json_object": False}, "structured_outputs.json_object", "must be true"),
        ({"regex": "[a-z"}, "structured_outputs.regex", "unclosed character class"),
        ({"regex": ""}, "structured_outputs.regex", "non-empty"),
        ({"choice": []}, "structured_outputs.choice", "non-empty list"),
        ({"choice": ["a", 3]}, "structured_outputs.choice", "non-empty list"),
        ({"grammar": "start: undefined_rule"}, "structured_outputs.grammar", "unknown name"),
    ],
)
def test_invalid_constraints_name_the_field_and_the_problem(kwargs, param, needle):
    with pytest.raises(InvalidRequestError) as info:
        StructuredOutputsParams(**kwargs)
    assert info.value.param == param
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_equal_schemas_share_one_cache_key_whatever_their_spelling():
    as_dict = StructuredOutputsParams(
        json={"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}
    )
    as_text = StructuredOutputsParams(
        json='{"properties": {"a": {"type": "string"}}, "required": ["a"], "type": "object"}'
    )
    assert as_dict.cache_key() == as_text.cache_key()
    assert (
        StructuredOutputsParams(json_object=True).cache_key()
        == StructuredOutputsParams(json={"type": "object"}).cache_key()
    )
    assert StructuredOutputsParams(regex="a+").cache_key() != StructuredOutputsParams(grammar='start: "a"').cache_key()


def test_kind_and_schema():
    assert StructuredOutputsParams(choice=["yes", "no"]).kind == "choice"
    assert StructuredOutputsParams(json_object=True).schema == {"type": "object"}
    assert StructuredOutputsParams(json='{"type": "integer"}').schema == {"type": "integer"}
    assert StructuredOutputsParams(regex="x").schema is None


def test_sampling_params_accepts_a_mapping_and_rejects_unknown_fields():
    params = SamplingParams(structured_outputs={"regex": "[0-9]+"})
    assert params.structured_outputs == StructuredOutputsParams(regex="[0-9]+")
    assert SamplingParams().structured_outputs is None
    with pytest.raises(InvalidRequestError, match="unknown field 'json_schema'"):
        SamplingParams(structured_outputs={"json_schema": {}})
    with pytest.raises(InvalidRequestError, match="must be an object"):
        SamplingParams(structured_outputs="json")


def test_property_order_is_part_of_the_cache_key():
    # llguidance writes properties in schema order: {"name", "arguments"} must not become {"arguments", "name"}.
    first = {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}}
    swapped = {"properties": {"arguments": {"type": "object"}, "name": {"type": "string"}}, "type": "object"}
    key = StructuredOutputsParams(json=first).cache_key()[1]
    assert key.index('"name"') < key.index('"arguments"')
    assert key != StructuredOutputsParams(json=swapped).cache_key()[1]
