"""Tool calling on the real SmolLM2-135M-Instruct (its template has no tools: the fallback prompt applies)."""

import json

import jsonschema
import pytest
from server_helpers import live_model_server
from tool_templates import HISTORY, TIME_TOOL, WEATHER_TOOL

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

NAME = "smollm2"
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today? Use celsius."}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, TIME_TOOL)}


@pytest.fixture(scope="module")
def client(smollm2_gguf_path):
    kw = {"max_model_len": 1024, "kv_cache_memory": "64MiB"}
    with (
        live_model_server(smollm2_gguf_path, NAME, **kw) as (url, app),
        openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c,
    ):
        yield c
        manager = app.state.engine.block_manager
        assert manager.num_free_blocks == manager.num_blocks


def calls_of_stream(stream):
    content, calls, reason = "", {}, None
    for chunk in stream:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for piece in choice.delta.tool_calls or []:
            if piece.id is not None:
                calls[piece.index] = [piece.function.name, ""]
            calls[piece.index][1] += piece.function.arguments or ""
        reason = choice.finish_reason or reason
    return content, [tuple(calls[i]) for i in sorted(calls)], reason


def valid(calls, names=tuple(SCHEMAS)):
    for name, arguments in calls:
        assert name in names
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])
    return bool(calls)


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [
        ("required", ("get_weather", "get_time")),
        ({"type": "function", "function": {"name": "get_time"}}, ("get_time",)),
    ],
    ids=["required", "named"],
)
def test_forced_calls_are_schema_valid_whole_and_streamed(client, tool_choice, names):
    kw = dict(
        model=NAME, messages=WEATHER, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice, max_tokens=96,
        temperature=0,
    )  # fmt: skip
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None and valid(whole, names)
    assert calls_of_stream(client.chat.completions.create(**kw, stream=True)) == ("", whole, "tool_calls")


def test_required_is_schema_valid_when_sampled(client):
    for seed in range(4):
        r = client.chat.completions.create(
            model=NAME, messages=WEATHER, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required", max_tokens=128,
            temperature=0.7, seed=seed,
        )  # fmt: skip
        calls = [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
        assert r.choices[0].finish_reason == "tool_calls" and valid(calls)


def test_auto_streams_what_it_answers_whole(client):
    kw = dict(model=NAME, messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=48, temperature=0)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    expected_reason = "tool_calls" if whole and choice.finish_reason != "length" else choice.finish_reason
    assert choice.finish_reason == expected_reason
    streamed = calls_of_stream(client.chat.completions.create(**kw, stream=True))
    assert streamed == (choice.message.content or "", whole, choice.finish_reason)


def test_a_tool_result_turn_is_answered(client):
    r = client.chat.completions.create(model=NAME, messages=HISTORY, tools=[WEATHER_TOOL], max_tokens=24, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens > 100
