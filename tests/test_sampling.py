"""SamplingParams validation and generation_config defaults."""

import pytest

from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 1.5}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": "7"}, "seed"),
        ({"seed": True}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", 3]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": "12"}, "stop_token_ids"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": 1.0}, "prompt_logprobs"),
        ({"logit_bias": {"a": 1.0}}, "logit_bias"),
        ({"logit_bias": {3: 101}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"skip_special_tokens": None}, "skip_special_tokens"),
    ],
)
def test_invalid_field_names_the_field(kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert param in str(info.value)


def test_valid_params_construct():
    p = SamplingParams(
        n=3,
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=-2,
        frequency_penalty=2,
        seed=0,
        max_tokens=8,
        min_tokens=8,
        stop="\n",
        stop_token_ids=[5],
        logprobs=20,
        prompt_logprobs=0,
        logit_bias={3: -100, 4: 2.5},
    )
    assert p.stop_strings == ["\n"]
    assert SamplingParams(stop=["a", "b"]).stop_strings == ["a", "b"]
    assert SamplingParams().stop_strings == []


def test_resolve_fills_unset_fields_from_defaults():
    defaults = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": [2]}
    p = SamplingParams(top_p=0.5).resolve(defaults)
    assert p.temperature == 0.6
    assert p.top_p == 0.5  # set by the request: kept
    assert p.top_k == 20
    assert p.repetition_penalty == 1.05
    assert p.min_p == 0.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0


def test_resolve_without_defaults_is_neutral_and_normalises_top_k():
    p = SamplingParams(top_k=-1).resolve(None)
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    assert not p.greedy
    assert SamplingParams(temperature=0).resolve({"temperature": 0.9}).greedy


def test_resolve_ignores_invalid_defaults_and_honours_do_sample_false():
    p = SamplingParams().resolve({"temperature": -1, "top_p": 7, "do_sample": False})
    assert p.greedy
    assert p.top_p == 1.0
    assert SamplingParams(temperature=0.5).resolve({"do_sample": False}).temperature == 0.5
