"""ToolCallParser: Hermes blocks and forced bare JSON, whole or streamed in any split."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from rusteeze.server.tool_parser import ToolCallParser, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>'


def streamed(text: str, pieces: list[int] | None = None, forced: bool = False, names=None):
    """Feed ``text`` in pieces (default: one character each); return (content, [(name, arguments)], ids)."""
    parser = ToolCallParser(forced, names)
    cuts = pieces if pieces is not None else list(range(1, len(text)))
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(text))), len(text)]
    content, names, args, ids = "", {}, {}, {}
    deltas = [parser.feed(text[a:b]) for a, b in itertools.pairwise(bounds)] + [parser.finish()]
    for delta in deltas:
        content += delta.content
        for piece in delta.calls:
            if piece.id is not None:
                assert piece.index not in ids and piece.name
                ids[piece.index], names[piece.index] = piece.id, piece.name
            args[piece.index] = args.get(piece.index, "") + piece.arguments
    assert sorted(names) == list(range(len(names)))
    return content, [(names[i], args.get(i, "")) for i in sorted(names)], [ids[i] for i in sorted(ids)]


def whole(text: str, forced: bool = False, names=None):
    content, calls = parse_tool_calls(text, forced, names)
    return content, [(c.name, c.arguments) for c in calls]


def test_plain_text_is_content_unchanged():
    for text in ("Hello world", "  spaced  \n", "a < b <tool but no call", "<tool_ca"):
        assert whole(text) == (text, []) and streamed(text)[:2] == (text, [])


def test_one_call_with_text_before_it():
    content, calls = whole("Let me check.\n" + CALL)
    assert content == "Let me check." and calls == [("get_weather", '{"city": "Paris", "days": [1, 2]}')]
    assert streamed("Let me check.\n" + CALL)[:2] == (content, calls)


def test_calls_alone_have_no_content_and_fresh_ids():
    text = CALL + "\n" + CALL.replace("Paris", "Rome")
    content, calls = whole(text)
    assert content is None and [c[1] for c in calls] == [
        '{"city": "Paris", "days": [1, 2]}',
        '{"city": "Rome", "days": [1, 2]}',
    ]
    _, _, ids = streamed(text)
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) == 29 for i in ids)


def test_key_order_missing_arguments_parameters_and_string_arguments():
    text = (
        '<tool_call>{"arguments": {"x": 1}, "name": "a"}</tool_call>'
        '<tool_call>{"name": "b"}</tool_call>'
        '<tool_call>{"name": "c", "parameters": {"y": null}}</tool_call>'
        '<tool_call>{"name": "d", "arguments": "{\\"z\\": true}"}</tool_call>'
    )
    expected = [("a", '{"x": 1}'), ("b", "{}"), ("c", '{"y": null}'), ("d", '{"z": true}')]
    assert whole(text) == (None, expected) and streamed(text)[:2] == ("", expected)


def test_text_after_and_between_calls_is_content():
    text = "A " + CALL + " B " + CALL + "\nC"
    content, calls = whole(text)
    assert content == "A  B \nC" and len(calls) == 2
    assert whole("\n" + CALL + "\nDone.\n")[0] == "Done."  # whitespace between a call and the start or end


def test_a_block_that_breaks_before_its_name_is_text():
    for text in ("<tool_call>not json</tool_call> ok", '<tool_call>{"name": 5}</tool_call>', '<tool_call>{"x": 1}'):
        assert whole(text) == (text, []) and streamed(text)[:2] == (text, [])


def test_a_block_that_breaks_after_its_name_keeps_the_call():
    text = '<tool_call>{"name": "f", "arguments": {"a": }}</tool_call> after'
    assert whole(text) == ("after", [("f", '{"a": ')])
    truncated = '<tool_call>{"name": "f", "arguments": {"q": "Par'  # cut by max_tokens
    assert whole(truncated) == (None, [("f", '{"q": "Par')])


def test_a_missing_closing_tag_before_the_next_call():
    text = '<tool_call>{"name":"a","arguments":{}}<tool_call>{"name":"b","arguments":{}}'
    assert whole(text) == (None, [("a", "{}"), ("b", "{}")])


def test_forced_bare_json_object_and_array():
    obj = ' {"name": "f", "arguments": {"q": "<tool_call>"}}'
    assert whole(obj, forced=True) == (None, [("f", '{"q": "<tool_call>"}')])
    arr = '[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"n": -0.5}}]'
    assert whole(arr, forced=True) == (None, [("f", "{}"), ("g", '{"n": -0.5}')])
    assert streamed(arr, forced=True)[:2] == ("", [("f", "{}"), ("g", '{"n": -0.5}')])
    assert whole(arr) == (arr, [])  # not forced: bare JSON is text
    assert whole("Sure: " + CALL, forced=True)[1] == [("get_weather", '{"city": "Paris", "days": [1, 2]}')]


def test_forced_json_that_is_not_a_call_is_content():
    for text in ('{"answer": 42}', "[1, 2]", "[{}]", '{"name": "f", "arguments": {}} trailing'):
        content, calls = whole(text, forced=True)
        assert (content, calls) == (text, []) or (text.endswith("trailing") and calls == [("f", "{}")])


def test_arguments_stream_before_the_call_ends():
    parser = ToolCallParser()
    first = parser.feed('<tool_call>{"name": "f", "arguments": {"city": "Pa')
    assert first.calls[0].name == "f" and first.calls[0].arguments == '{"city": "Pa'
    assert parser.feed('ris"}').calls[0].arguments == 'ris"}'
    assert parser.feed("}</tool_call>").calls == []


@given(
    st.lists(
        st.sampled_from(
            [
                "Hi ",
                CALL,
                "\n",
                " <tool",
                "_call>{",
                '"name"',
                ': "x"',
                "}",
                "</tool_call>",
                "[",
                '{"a": 1}',
                ', "arguments": ',
            ]
        ),
        max_size=6,
    ),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from([(False, None), (True, None), (False, frozenset({"x", "get_weather"}))]),
)
def test_any_split_gives_the_whole_result(parts, cuts, mode):
    forced, names = mode
    text = "".join(parts)
    content, calls = whole(text, forced, names)
    assert streamed(text, cuts, forced, names)[:2] == (content or "", calls)
    if not calls:
        assert content == text


NAMES = frozenset({"get_weather", "get_time"})


def test_auto_reads_a_bare_call_of_a_known_tool_llama_style():
    text = '{"name": "get_time", "parameters": {"zone": "UTC"}}'
    assert whole(text) == (text, [])  # without the tools' names: content
    parsed = parse_tool_calls(text, names=NAMES)
    assert parsed[0] is None and [(c.name, c.arguments) for c in parsed[1]] == [("get_time", '{"zone": "UTC"}')]
    typed = ' {"type": "function", "name": "get_weather", "arguments": {}}\nDone.'
    content, calls = parse_tool_calls(typed, names=NAMES)
    assert content == "Done." and [c.name for c in calls] == ["get_weather"]


def test_auto_leaves_other_json_as_content():
    for text in ('{"name": "Paris"}', '{"answer": 42}', '{"city": "x", "name": "get_time"}', '[{"name": "get_time"}]'):
        assert parse_tool_calls(text, names=NAMES) == (text, [])
        parser = ToolCallParser(names=NAMES)
        content = "".join(parser.feed(ch).content for ch in text) + parser.finish().content
        assert content == text and not parser.calls
