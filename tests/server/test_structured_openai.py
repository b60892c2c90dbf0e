"""response_format and structured_outputs through the official openai client, on SmolLM2 behind a live server."""

import json

import jsonschema
import pytest
from server_helpers import live_model_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

NAME = "smollm2"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Where is the Eiffel Tower? Answer in JSON."}]


@pytest.fixture(scope="module")
def client(smollm2_gguf_path):
    kw = {"max_model_len": 512, "kv_cache_memory": "64MiB"}
    with (
        live_model_server(smollm2_gguf_path, NAME, **kw) as (base, _app),
        openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0) as c,
    ):
        yield c


def test_chat_json_schema_whole_and_streamed(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": CITY, "strict": True}}
    whole = client.chat.completions.create(model=NAME, messages=ASK, response_format=fmt, temperature=0.7, seed=1)
    assert whole.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].message.content), CITY)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=ASK, response_format=fmt, temperature=0.7, seed=1, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # same seed, same reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_json_object_streamed(client):
    # Named keys: asked for "JSON" alone, greedy SmolLM2 repeats a "description" key until max_tokens
    # (float32 math too): json_object constrains the syntax, not the length.
    ask = [{"role": "user", "content": "Where is the Eiffel Tower? Answer in JSON with the keys city and country."}]
    stream = client.chat.completions.create(
        model=NAME, messages=ask, response_format={"type": "json_object"}, max_tokens=200, stream=True, temperature=0
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(json.loads(text), dict)


def test_completions_take_response_format_and_the_structured_outputs_extension(client):
    prompt = "The capital of France is"
    choice = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=10, extra_body={"structured_outputs": {"choice": ["Paris", "Rome"]}}
    )
    assert choice.choices[0].text in ("Paris", "Rome") and choice.choices[0].finish_reason == "stop"
    schema = {"type": "object", "properties": {"capital": {"enum": ["Paris", "Rome"]}}, "required": ["capital"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    made = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=60, temperature=0, extra_body={"response_format": fmt}
    )
    jsonschema.validate(json.loads(made.choices[0].text), schema)


def test_a_bad_schema_is_a_400_naming_the_field(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=ASK, response_format=fmt)
    assert info.value.body["param"] == "response_format.json_schema.schema"
    assert "Invalid type: nope" in info.value.body["message"]
