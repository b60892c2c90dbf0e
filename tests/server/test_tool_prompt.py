"""Tools into the prompt: the template's own `tools` when it reads them, the fallback block otherwise."""

import json

import pytest
from tool_templates import HERMES_TEMPLATE, HISTORY, TIME_TOOL, WEATHER_TOOL

from rusteeze.server.protocol import parse_chat
from rusteeze.server.tool_parser import parse_tool_calls
from rusteeze.server.tool_prompt import chat_inputs, template_knows_tools, tools_prompt
from rusteeze.tokenizer import Tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return Tokenizer.from_dir(tiny_llama_dir)  # plain ChatML: no tools


def render(tokenizer, body):
    req = parse_chat(body, trust_chat_template=True)
    messages, kwargs = chat_inputs(tokenizer, req.messages, req.tools, req.template_kwargs)
    return tokenizer.apply_chat_template(messages, **kwargs), messages


def test_which_templates_know_tools():
    assert template_knows_tools(HERMES_TEMPLATE)
    assert not template_knows_tools(CHATML)
    assert not template_knows_tools("{# tools are not used #}{{ messages[0]['content'] }} tools")


def test_a_template_that_knows_tools_renders_them_and_the_history(tokenizer):
    body = {"messages": HISTORY, "tools": [WEATHER_TOOL], "chat_template_kwargs": {"chat_template": HERMES_TEMPLATE}}
    text, messages = render(tokenizer, body)
    assert json.dumps(WEATHER_TOOL) in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' in text
    )
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in text
    assert messages[2]["role"] == "tool"  # the conversation as sent


def test_the_fallback_adds_a_system_block_and_rewrites_the_history(tokenizer):
    text, messages = render(tokenizer, {"messages": HISTORY, "tools": [WEATHER_TOOL, TIME_TOOL]})
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("# Tools")
    assert json.dumps(TIME_TOOL) in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    # The history's call is written in the very format the parser reads.
    assert parse_tool_calls(messages[2]["content"])[1][0].name == "get_weather"
    assert messages[3]["content"] == "<tool_response>\n18 degrees, sunny\n</tool_response>"
    assert text.count("<|im_start|>") == 5  # four turns and the generation prompt


def test_the_fallback_block_joins_an_existing_system_message_and_states_the_forced_format(tokenizer):
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "time?"}],
        "tools": [TIME_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
    _, messages = render(tokenizer, body)
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools") and len(messages) == 2
    assert '{"name": "get_time", "arguments":' in messages[0]["content"]
    required = parse_chat({"messages": HISTORY, "tools": [TIME_TOOL], "tool_choice": "required"}).tools
    assert "JSON array of one or more calls" in tools_prompt(required)


def test_tool_choice_none_adds_no_fallback_block_but_the_template_still_sees_tools(tokenizer):
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [TIME_TOOL], "tool_choice": "none"}
    text, messages = render(tokenizer, body)
    assert "# Tools" not in text and messages == [{"role": "user", "content": "hi"}]
    native, _ = render(tokenizer, {**body, "chat_template_kwargs": {"chat_template": HERMES_TEMPLATE}})
    assert json.dumps(TIME_TOOL) in native
