"""JsonPrefixScanner: accepts exactly the prefixes of valid JSON and tells each character's value."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rusteeze.server.json_prefix import JsonPrefixError, JsonPrefixScanner

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def scan(text: str) -> JsonPrefixScanner:
    scanner = JsonPrefixScanner()
    for ch in text:
        scanner.feed(ch)
    return scanner


@given(JSON_VALUES, st.sampled_from([None, 1, 2]))
def test_every_valid_json_text_is_accepted_and_complete(value, indent):
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    scanner = scan(text)
    assert scanner.finish()


@pytest.mark.parametrize(
    "text",
    [
        '{"a" 1}',
        '{"a": 1,}',
        "[1 2]",
        "{'a': 1}",
        '{"a": tru3}',
        "[01]",
        '"\\x"',
        "[1.e5]",
        '{"a": 1}}',
        "[-]",
        "{1: 2}",
    ],
)
def test_invalid_json_is_refused_at_the_first_bad_character(text):
    with pytest.raises(JsonPrefixError):
        scanner = scan(text)
        if not scanner.finish():
            raise JsonPrefixError("incomplete")


def test_a_prefix_is_accepted_but_not_complete():
    scanner = scan('{"a": [1, {"b": "x')
    assert not scanner.done and not scanner.finish()


def test_each_character_belongs_to_the_innermost_value():
    text = '{"k": [10, "s"], "o": {"t": true}}'
    scanner = JsonPrefixScanner()
    paths = [scanner.feed(ch) for ch in text]
    owner = {text[i]: p for i, p in enumerate(paths)}
    assert paths[0] == () and paths[1] == ()  # the object's brace and its key
    assert owner["["] == ("k",) and paths[text.index("1")] == ("k", 0) and owner["s"] == ("k", 1)
    key_t = text.index('"t"') + 1
    assert paths[key_t] == ("o",) and paths[text.index("r")] == ("o", "t")  # key "t" belongs to the object
    assert paths[-1] == ()


def test_closed_reports_the_values_a_character_completes():
    scanner = JsonPrefixScanner()
    closed = []
    for ch in '{"n": 12}':
        scanner.feed(ch)
        closed.append(list(scanner.closed))
    assert closed[-1] == [("n",), ()]  # the brace ends the number and the object
    assert scanner.done
