"""tools / tool_choice / tool messages: validation (400 naming the field) and the forced call's schema."""

import copy

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tool_templates import HISTORY, TIME_TOOL, WEATHER_TOOL

from rusteeze.sampling import SamplingParams
from rusteeze.server.http import APIError
from rusteeze.server.protocol import parse_chat
from rusteeze.server.tools import parse_tool_request
from rusteeze.structured import StructuredOutputsParams
from rusteeze.tokenizer import Tokenizer

USER = [{"role": "user", "content": "hi"}]
NOPE = {"type": "function", "function": {"name": "nope"}}


def tool(**function):
    return {"type": "function", "function": {"name": "f", **function}}


def param_of_error(body) -> str:
    with pytest.raises(APIError) as info:
        parse_chat({"messages": USER, **body})
    assert info.value.status == 400
    return info.value.param


def test_defaults_auto_with_tools_and_none_without():
    req = parse_chat({"messages": USER, "tools": [WEATHER_TOOL]})
    assert req.tools.choice == "auto" and req.tools.parses and not req.tools.forced and req.tools.parallel
    assert req.params.structured_outputs is None
    assert parse_chat({"messages": USER, "tool_choice": "auto"}).tools is None
    tool = parse_tool_request({"tools": [{"type": "function", "function": {"name": "ping"}}]}).tools[0]
    assert tool["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": ["f"]}, "tools[0]"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [tool(name="has space")]}, "tools[0].function.name"),
        ({"tools": [tool(description=3)]}, "tools[0].function.description"),
        ({"tools": [tool(parameters=[])]}, "tools[0].function.parameters"),
        ({"tools": [tool(strict="yes")]}, "tools[0].function.strict"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].function.name"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": NOPE}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s_naming_the_field(body, param):
    assert param_of_error(body) == param


def test_unknown_named_function_names_it():
    body = {"messages": USER, "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}}
    with pytest.raises(APIError) as info:
        parse_chat(body)
    assert "'x'" in info.value.message and "get_weather" in info.value.message


def test_forced_call_with_an_unusable_schema_names_the_tool():
    bad = copy.deepcopy(TIME_TOOL)
    bad["function"]["parameters"] = {"type": "object", "properties": {"zone": {"type": "strnig"}}}
    assert param_of_error({"tools": [WEATHER_TOOL, bad], "tool_choice": "required"}) == "tools[1].function.parameters"


def test_a_forced_call_and_response_format_conflict():
    req = parse_tool_request({"tools": [WEATHER_TOOL], "tool_choice": "required"})
    params = SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True))
    with pytest.raises(APIError) as info:
        req.constrain(params)
    assert info.value.param == "response_format"


def test_tool_history_is_accepted_with_arguments_as_json_values():
    req = parse_chat({"messages": HISTORY, "tools": [WEATHER_TOOL]})
    call = req.messages[1]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
    }
    assert req.messages[1]["content"] == "" and req.messages[2]["tool_call_id"] == "call_1"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({2: {"role": "tool", "content": "x"}}, "messages[2].tool_call_id"),
        ({1: {"role": "assistant", "tool_calls": {"id": "a"}}}, "messages[1].tool_calls"),
        ({1: {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}},
         "messages[1].tool_calls[0].function.arguments"),
        ({1: {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}},
         "messages[1].tool_calls[0].function.name"),
        ({0: {"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}}, "messages[0].tool_calls"),
    ],
)  # fmt: skip
def test_bad_tool_messages_are_400s_naming_the_field(change, param):
    messages = [change.get(i, m) for i, m in enumerate(HISTORY)]
    with pytest.raises(APIError) as info:
        parse_chat({"messages": messages})
    assert info.value.param == param


def test_required_schema_accepts_exactly_calls_of_the_tools():
    req = parse_tool_request({"tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required"})
    schema = req.call_schema()
    good = [
        {"name": "get_time", "arguments": {"zone": "UTC"}},
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
    ]
    jsonschema.validate(good, schema)
    for bad in ([], [{"name": "get_time", "arguments": {"zone": "Mars"}}], [{"name": "other", "arguments": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    single = parse_tool_request({"tools": [TIME_TOOL], "tool_choice": "required", "parallel_tool_calls": False})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([good[0], good[0]], single.call_schema())
    assert parse_chat({"messages": USER, "tools": [TIME_TOOL], "tool_choice": "required"}).params.structured_outputs


def test_named_schema_is_one_call_object_and_defs_keep_working():
    tool = {
        "type": "function",
        "function": {
            "name": "move",
            "parameters": {
                "type": "object",
                "properties": {"to": {"$ref": "#/$defs/Point"}},
                "required": ["to"],
                "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
            },
        },
    }
    req = parse_tool_request(
        {"tools": [TIME_TOOL, tool], "tool_choice": {"type": "function", "function": {"name": "move"}}}
    )
    schema = req.call_schema()
    jsonschema.validate({"name": "move", "arguments": {"to": {"x": 1}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "move", "arguments": {"to": {"x": "1"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_time", "arguments": {"zone": "UTC"}}, schema)
    StructuredOutputsParams(json=schema)  # llguidance compiles it


def test_refs_to_any_part_of_the_parameters_and_to_their_root_keep_working():
    tree = {
        "type": "object",
        "properties": {
            "label": {"$ref": "#/properties/name"},
            "name": {"type": "string", "maxLength": 3},
            "child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
        },
        "required": ["label"],
    }
    req = parse_tool_request({"tools": [tool(name="tree", parameters=tree)], "tool_choice": "required"})
    schema = req.call_schema()
    jsonschema.validate([{"name": "tree", "arguments": {"label": "a", "child": {"label": "b", "child": None}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "tree", "arguments": {"label": "a", "child": {"label": "long"}}}], schema)
    StructuredOutputsParams(json=schema)
    junk = {"type": "object", "$defs": 5}  # not a schema error llguidance cares about: accepted, never a 500
    assert parse_chat({"messages": USER, "tools": [tool(parameters=junk)], "tool_choice": "required"}).tools
    missing = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    assert param_of_error({"tools": [tool(parameters=missing)], "tool_choice": "required"}) == (
        "tools[0].function.parameters"
    )


def _tokenizer_with_tags(special: bool) -> Tokenizer:
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_tokens([AddedToken(t, special=special) for t in ("<tool_call>", "</tool_call>")])
    return Tokenizer(backend)


def test_special_call_tags_are_kept_in_the_text_only_when_calls_are_parsed():
    params = SamplingParams()
    auto = parse_tool_request({"tools": [TIME_TOOL]})
    none = parse_tool_request({"tools": [TIME_TOOL], "tool_choice": "none"})
    special, plain = _tokenizer_with_tags(True), _tokenizer_with_tags(False)
    assert special.decode(special.encode("<tool_call>hi")) == "hi"  # what the parser would get
    assert auto.keep_call_tags(params, special).skip_special_tokens is False
    assert auto.keep_call_tags(params, plain) is params and none.keep_call_tags(params, special) is params


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "f", "#", "#/x", "function", "object"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "function", "name", "parameters", "$ref", "properties", "$defs"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(JSON, JSON, st.sampled_from([None, "auto", "required", "none", {"type": "function", "function": {"name": "f"}}]))
def test_any_tools_json_is_parsed_or_a_400(parameters, junk, choice):
    bodies = [
        {"tools": [tool(parameters=parameters)], "tool_choice": choice},
        {"tools": junk, "tool_choice": choice},
        {"tools": [junk]},
        {"tools": [tool()], "tool_choice": junk},
        {"messages": [*USER, {"role": "assistant", "tool_calls": junk}]},
        {"messages": [*USER, {"role": "assistant", "tool_calls": [{"function": junk}]}]},
        {"messages": [*USER, {"role": "tool", "tool_call_id": junk, "content": "r"}]},
    ]
    for body in bodies:
        try:
            req = parse_chat({"messages": USER, **body})
        except APIError as e:
            assert e.status == 400 and e.param
            continue
        if req.tools is not None and req.tools.forced:
            assert req.params.structured_outputs is not None
