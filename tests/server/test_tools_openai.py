"""Tool calling end to end: the official openai client against a live server (tiny model, then SmolLM2)."""

import json

import httpx
import jsonschema
import pytest
from server_helpers import MODEL, live_server
from tool_templates import HERMES_TEMPLATE, HISTORY, TIME_TOOL, WEATHER_TOOL

openai = pytest.importorskip("openai")

WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
HERMES = {"chat_template_kwargs": {"chat_template": HERMES_TEMPLATE}}


def small_tool(name: str, key: str, values: list[str]) -> dict:
    """A tool short enough for the tiny model's 512 positions (its vocabulary is small)."""
    parameters = {
        "type": "object",
        "properties": {key: {"enum": values}},
        "required": [key],
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# The tiny model's tools: their schemas bound the calls, so a random model's forced calls end quickly.
TINY_WEATHER, TINY_TIME = small_tool("weather", "unit", ["c", "f"]), small_tool("time", "zone", ["UTC", "CET"])
SCHEMAS = {
    t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, TIME_TOOL, TINY_WEATHER, TINY_TIME)
}


@pytest.fixture(scope="module")
def tiny_url(tmp_path_factory):
    """A live server over a tiny random Llama with 2,048 positions (its small vocabulary makes tool prompts long)."""
    from tiny_models import build_model_dir

    from rusteeze.config import EngineConfig
    from rusteeze.engine.engine import Engine
    from rusteeze.server.app import create_app
    from rusteeze.server.settings import ServerSettings

    model_dir = build_model_dir(tmp_path_factory.mktemp("tools_llama"), "llama", seed=3, max_position_embeddings=2048)
    config = EngineConfig(
        model=str(model_dir), device="cpu", kernel_backend="torch", max_model_len=2048, block_size=16,
        kv_cache_memory="16MiB",
    )  # fmt: skip
    app = create_app(ServerSettings(trust_request_chat_template=True), lambda: Engine(config), MODEL)
    with live_server(app) as url:
        yield url
        manager = app.state.engine.block_manager
        assert manager.num_free_blocks == manager.num_blocks  # every request freed its blocks


@pytest.fixture
def tiny(tiny_url):
    with openai.OpenAI(base_url=tiny_url + "/v1", api_key="none", max_retries=0) as c:
        yield c


def assert_valid_calls(calls, names=None):
    """Every call names a tool (one of ``names`` when given) and its arguments are valid against its schema."""
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def collect_stream(stream):
    """(content, [(id, name, arguments)], finish_reason) of a streamed chat completion."""
    content, calls, reason = "", {}, None
    for chunk in stream:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for piece in choice.delta.tool_calls or []:
            if piece.id is not None:
                assert piece.index not in calls and piece.function.name and piece.type == "function"
                calls[piece.index] = [piece.id, piece.function.name, ""]
            calls[piece.index][2] += piece.function.arguments or ""
        reason = choice.finish_reason or reason
    return content, [tuple(calls[i]) for i in sorted(calls)], reason


@pytest.mark.parametrize("template", [HERMES, {}], ids=["tools-template", "fallback"])
def test_required_gives_schema_valid_calls_whole_and_streamed(tiny, template):
    kw = dict(
        model=MODEL, messages=WEATHER, tools=[TINY_WEATHER, TINY_TIME], tool_choice="required",
        parallel_tool_calls=False, max_tokens=60, temperature=0, extra_body=template,
    )  # fmt: skip
    whole = tiny.chat.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls=False
    content, calls, reason = collect_stream(tiny.chat.completions.create(**kw, stream=True))
    expected = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert (content, [c[1:] for c in calls], reason) == ("", expected, "tool_calls")
    # The name comes first (the schema lists it first), then the arguments in pieces as they are written.
    pieces = [
        p for chunk in tiny.chat.completions.create(**kw, stream=True) for p in chunk.choices[0].delta.tool_calls or []
    ]
    assert pieces[0].function.name == expected[0][0] and pieces[0].function.arguments == ""
    assert len(pieces) > 3 and all(p.id is None and p.function.name is None for p in pieces[1:])


def test_n_choices_and_logprobs_with_forced_calls(tiny):
    kw = dict(
        model=MODEL, messages=WEATHER, tools=[TINY_WEATHER, TINY_TIME], tool_choice="required", n=2, seed=5,
        temperature=1.0, max_tokens=60, logprobs=True, parallel_tool_calls=False,
    )  # fmt: skip
    r = tiny.chat.completions.create(**kw)
    assert [c.finish_reason for c in r.choices] == ["tool_calls", "tool_calls"]
    for choice in r.choices:
        assert_valid_calls(choice.message.tool_calls)
    assert sum(len(c.logprobs.content) for c in r.choices) == r.usage.completion_tokens
    calls, logprobs = {0: "", 1: ""}, 0
    for chunk in tiny.chat.completions.create(**kw, stream=True):
        for choice in chunk.choices:
            logprobs += len(choice.logprobs.content) if choice.logprobs else 0
            for piece in choice.delta.tool_calls or []:
                calls[choice.index] += piece.function.arguments or ""
    assert calls == {c.index: c.message.tool_calls[0].function.arguments for c in r.choices}
    assert logprobs == r.usage.completion_tokens  # every token's logprob, even those of held-back text


def test_a_named_function_is_the_one_called(tiny):
    named = {"type": "function", "function": {"name": "time"}}
    for seed in range(3):
        r = tiny.chat.completions.create(
            model=MODEL, messages=WEATHER, tools=[TINY_WEATHER, TINY_TIME], tool_choice=named, max_tokens=60,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        assert r.choices[0].finish_reason == "tool_calls"
        assert_valid_calls(r.choices[0].message.tool_calls, names=["time"])


def test_auto_without_a_call_is_plain_content(tiny):
    kw = dict(model=MODEL, messages=WEATHER, tools=[TINY_TIME], max_tokens=12, temperature=0, extra_body=HERMES)
    r = tiny.chat.completions.create(**kw)
    plain = tiny.chat.completions.create(
        model=MODEL, messages=WEATHER, max_tokens=12, temperature=0, extra_body={**HERMES, "ignore_eos": False}
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools are in the prompt
    content, calls, reason = collect_stream(tiny.chat.completions.create(**kw, stream=True))
    assert (content, calls, reason) == (r.choices[0].message.content, [], r.choices[0].finish_reason)


def test_auto_parses_a_call_the_model_writes(tiny):
    # The tiny model writes no calls of its own: a regex constraint makes it write one, as a tools model would.
    regex = r'Checking\.\n<tool_call>\n\{"name": "time", "arguments": \{"zone": "(UTC|CET)"\}\}\n</tool_call>'
    kw = dict(
        model=MODEL, messages=WEATHER, tools=[TINY_TIME], max_tokens=80, temperature=0,
        extra_body={**HERMES, "structured_outputs": {"regex": regex}},
    )  # fmt: skip
    r = tiny.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.message.content == "Checking." and choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls, names=["time"])
    content, calls, reason = collect_stream(tiny.chat.completions.create(**kw, stream=True))
    assert content == "Checking." and reason == "tool_calls"
    assert [c[1:] for c in calls] == [("time", choice.message.tool_calls[0].function.arguments)]


def test_parallel_tool_calls_false_answers_the_first_call_only(tiny):
    call = r'<tool_call>\n\{"name": "time", "arguments": \{"zone": "(UTC|CET)"\}\}\n</tool_call>'
    kw = dict(
        model=MODEL, messages=WEATHER, tools=[TINY_TIME], max_tokens=200, temperature=0, parallel_tool_calls=False,
        extra_body={**HERMES, "structured_outputs": {"regex": call + "\n" + call}},
    )  # fmt: skip
    r = tiny.chat.completions.create(**kw)
    assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].finish_reason == "tool_calls"
    _, calls, _ = collect_stream(tiny.chat.completions.create(**kw, stream=True))
    assert [c[1:] for c in calls] == [("time", r.choices[0].message.tool_calls[0].function.arguments)]


@pytest.mark.parametrize("template", [HERMES, {}], ids=["tools-template", "fallback"])
def test_a_tool_result_conversation_is_accepted(tiny, template):
    r = tiny.chat.completions.create(
        model=MODEL, messages=HISTORY, tools=[TINY_WEATHER], max_tokens=4, temperature=0, extra_body=template
    )
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens > 40


def test_tokenize_counts_the_prompt_chat_sends(tiny, tiny_url):
    kw = dict(model=MODEL, messages=HISTORY, tools=[TINY_WEATHER], tool_choice="required", max_tokens=1)
    r = tiny.chat.completions.create(**kw)
    body = {"messages": HISTORY, "tools": [TINY_WEATHER], "tool_choice": "required"}
    count = httpx.post(tiny_url + "/tokenize", json=body).json()["count"]
    plain = httpx.post(tiny_url + "/tokenize", json={"messages": HISTORY}).json()["count"]
    assert count == r.usage.prompt_tokens and count > plain + 100  # the fallback block is in both


def test_bad_tools_are_400_not_500(tiny):
    with pytest.raises(openai.BadRequestError) as info:
        tiny.chat.completions.create(
            model=MODEL,
            messages=WEATHER,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "x"}},
        )
    assert info.value.body["param"] == "tool_choice.function.name"
    with pytest.raises(openai.BadRequestError) as info:
        tiny.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "18 degrees"}])
    assert info.value.body["param"] == "messages[0].tool_call_id"
