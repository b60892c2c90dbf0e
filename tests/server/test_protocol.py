"""Request parsing: every accepted shape, and a 400 naming the field for everything else."""

import pytest

from rusteeze.server.http import APIError
from rusteeze.server.protocol import MAX_N, parse_chat, parse_completion

USER = [{"role": "user", "content": "hi"}]


def error_of(parse, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompt_shapes(prompt, prompts):
    assert parse_completion({"prompt": prompt}).prompts == prompts


def test_completion_defaults_and_sampling_fields():
    req = parse_completion({"prompt": "x"})
    assert req.params.max_tokens == 16 and not req.stream and not req.echo and req.logprobs is None
    req = parse_completion(
        {
            "model": "m",
            "prompt": "x",
            "max_tokens": 5,
            "n": 2,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "min_p": 0.1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.1,
            "seed": 7,
            "stop": ["\n", "END"],
            "stop_token_ids": [3],
            "ignore_eos": True,
            "min_tokens": 2,
            "logit_bias": {"5": -100, "6": 2.5},
            "logprobs": 3,
            "echo": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
            "metadata": {"ignored": True},
        }
    )
    p = req.params
    assert (req.model, req.stream, req.include_usage, req.echo, req.logprobs) == ("m", True, True, True, 3)
    assert (p.max_tokens, p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (5, 2, 0.5, 0.9, 40, 0.1)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.seed) == (0.5, -0.5, 1.1, 7)
    assert p.stop == ["\n", "END"] and p.stop_token_ids == [3] and p.ignore_eos and p.min_tokens == 2
    assert p.logit_bias == {5: -100, 6: 2.5}
    assert p.logprobs == 3 and p.prompt_logprobs == 3  # echo with logprobs shows the prompt's too


def test_nulls_are_absent_and_usage_needs_a_stream():
    body = {"prompt": "x", "temperature": None, "stop": None, "stream_options": {"include_usage": True}}
    req = parse_completion(body)
    assert req.params.temperature is None and req.params.stop is None
    assert not req.include_usage  # stream_options only matter when streaming


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "model": 3}, "model"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream": True, "stream_options": []}, "stream_options"),
        ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}}, "include_usage"),
        ({"prompt": "x", "echo": 1}, "echo"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": MAX_N + 1}, "n"),
        ({"prompt": "x", "n": 1.5}, "n"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "min_p": 2}, "min_p"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": -2.5}, "frequency_penalty"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "seed": 1.5}, "seed"),
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
        ({"prompt": "x", "stop_token_ids": "1"}, "stop_token_ids"),
        ({"prompt": "x", "ignore_eos": "no"}, "ignore_eos"),
        ({"prompt": "x", "min_tokens": -1}, "min_tokens"),
        ({"prompt": "x", "min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "logit_bias": []}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"-1": 1}}, "logit_bias"),
    ],
)
def test_completion_errors_name_the_field(body, param):
    assert error_of(parse_completion, body).param == param


def test_chat_messages_and_defaults():
    req = parse_chat(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "c", "name": "bob"},
            ],
            "tool_choice": "none",
            "response_format": {"type": "text"},
            "parallel_tool_calls": False,
        }
    )
    assert req.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "c", "name": "bob"},
    ]
    assert req.params.max_tokens is None  # chat: up to the context unless asked
    assert not req.logprobs and req.add_generation_prompt


def test_chat_max_completion_tokens_wins_and_logprobs():
    body = {"messages": USER, "max_tokens": 5, "max_completion_tokens": 7, "logprobs": True, "top_logprobs": 2}
    req = parse_chat(body)
    assert req.params.max_tokens == 7
    assert req.logprobs and req.top_logprobs == 2 and req.params.logprobs == 2
    assert parse_chat({"messages": USER, "logprobs": True}).params.logprobs == 0
    assert parse_chat({"messages": USER, "logprobs": False}).params.logprobs is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [*USER, {"role": "user", "content": [{"type": "image_url"}]}]}, "messages[1].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages[0].content[0]"),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": USER, "modalities": ["audio"]}, "modalities"),
        ({"messages": USER, "logprobs": 1}, "logprobs"),
        ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "logprobs"),
        ({"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": USER, "chat_template_kwargs": []}, "chat_template_kwargs"),
        ({"messages": USER, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({"messages": USER, "temperature": -0.1}, "temperature"),
    ],
)
def test_chat_errors_name_the_field(body, param):
    assert error_of(parse_chat, body).param == param


def test_error_body_is_openai_shaped():
    body = error_of(parse_completion, {"prompt": "x", "top_p": 2}).body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and "top_p" in body["error"]["message"]
