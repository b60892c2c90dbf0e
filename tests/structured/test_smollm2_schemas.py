"""SmolLM2 under JSON-schema constraints at temperature 0.7: every reply is valid (jsonschema) and complete."""

import json
import re

import jsonschema
import pytest

from rusteeze.sampling import SamplingParams
from rusteeze.structured import StructuredOutputsParams

pytestmark = pytest.mark.slow

NAME = {"type": "string", "minLength": 1, "maxLength": 16}


def obj(required: tuple[str, ...] | None = None, **properties: dict) -> dict:
    """A closed object schema; every property is required unless ``required`` names some."""
    required = list(properties) if required is None else list(required)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def bounded(kind: str, low: float, high: float) -> dict:
    return {"type": kind, "minimum": low, "maximum": high}


def schemas() -> list[tuple[str, dict]]:
    """(prompt, schema) pairs covering objects, arrays, enums, nesting, required fields, bounds and patterns."""
    person = obj(name=NAME, age=bounded("integer", 0, 120))
    author = obj(required=("last",), first=NAME, last=NAME)
    return [
        ("Describe a person as JSON.", person),
        ("List three fruits as a JSON array.", {"type": "array", "items": NAME, "minItems": 1, "maxItems": 4}),
        ("Is it sunny? Answer as JSON.", obj(answer={"enum": ["yes", "no", "maybe"]})),
        ("Give the temperature in Celsius as JSON.", obj(celsius=bounded("number", -50, 60))),
        ("Give a US zip code as JSON.", obj(zip={"type": "string", "pattern": "^[0-9]{5}$"})),
        ("Describe a family of two people as JSON.", obj(family={"type": "array", "items": person, "maxItems": 2})),
        (
            "Describe a book as JSON.",
            obj(required=("author", "genre"), author=author, genre={"enum": ["fiction", "science", "history"]}),
        ),
        ("Pick a color as JSON.", {"enum": ["red", "green", "blue"]}),
        ("Rate a movie from 1 to 5 as JSON.", bounded("integer", 1, 5)),
        ("Is water wet? Answer as a JSON boolean.", {"type": "boolean"}),
        (
            "Give a product code like AB-123 and its price as JSON.",
            obj(
                code={"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                price={"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            ),
        ),
        (
            "Describe a point as JSON.",
            obj(
                x=bounded("integer", -10, 10), y=bounded("integer", -10, 10), label={"anyOf": [NAME, {"type": "null"}]}
            ),
        ),
    ]


def test_every_reply_is_schema_valid_and_ends_with_stop(smollm2_llm):
    cases = schemas()
    messages = [[{"role": "user", "content": prompt}] for prompt, _ in cases]
    params = [
        SamplingParams(temperature=0.7, seed=i, max_tokens=400, structured_outputs=StructuredOutputsParams(json=schema))
        for i, (_, schema) in enumerate(cases)
    ]
    outputs = smollm2_llm.chat(messages, params, use_tqdm=False)
    for (prompt, schema), out in zip(cases, outputs, strict=True):
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", (prompt, completion.text)
        jsonschema.validate(json.loads(completion.text), schema)


def test_regex_choice_and_grammar_on_a_real_model(smollm2_llm):
    ask = [[{"role": "user", "content": "What is the capital of France?"}]]
    regex = "[A-Z][a-z]{1,12}( [A-Z][a-z]{1,12})?"
    lark = 'start: "The answer is " city "."\ncity: /[A-Z][a-z]{1,12}/'
    kinds = [{"regex": regex}, {"choice": ["Paris", "London", "Rome"]}, {"grammar": lark}]
    params = [SamplingParams(temperature=0, max_tokens=40, structured_outputs=k) for k in kinds]
    by_regex, by_choice, by_grammar = (o.outputs[0] for o in smollm2_llm.chat(ask * 3, params, use_tqdm=False))
    assert by_regex.finish_reason == by_choice.finish_reason == by_grammar.finish_reason == "stop"
    assert re.fullmatch(regex, by_regex.text), by_regex.text
    assert by_choice.text in ("Paris", "London", "Rome")
    assert re.fullmatch(r"The answer is [A-Z][a-z]{1,12}\.", by_grammar.text), by_grammar.text
