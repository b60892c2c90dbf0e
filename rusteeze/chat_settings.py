"""ChatSettings: the system prompt and sampling settings of a chat, as `/set`, flags and `[chat]` change them.

Values left as None are *unset*: a reply then takes the model's generation defaults
(``generation_config.json``), else :data:`CHAT_FALLBACKS` (the values Ollama and llama.cpp
use, since a small model sampled at temperature 1 with no truncation rambles), else
SamplingParams' neutral values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rusteeze.errors import ConfigError, InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.structured.output_format import parse_output_format
from rusteeze.structured.params import StructuredOutputsParams

CHAT_FALLBACKS: dict[str, float | int] = {"temperature": 0.8, "top_p": 0.95, "top_k": 40}

# What `/set KEY VALUE` accepts, with the type its value is parsed as.
SETTABLE: dict[str, type] = {"temperature": float, "top_p": float, "top_k": int, "max_tokens": int, "seed": int}
# Words that unset a value again (back to the model's default).
UNSET_WORDS = ("default", "none", "off")


@dataclass(frozen=True)
class ChatSettings:
    """What the user chose for this chat (None: not chosen).

    Attributes:
        system: the system prompt, sent as the first message of every request.
        temperature, top_p, top_k, seed: as in SamplingParams.
        max_tokens: most tokens per reply; None means up to the context length.
        verbose: print TTFT and tokens/s after each reply.
        format: Ollama's ``format``: "json" (any JSON object) or a JSON schema
            file (or the schema inline); every reply is constrained to it.
        structured_outputs: the constraint ``format`` stands for (read once, when set).
    """

    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    verbose: bool = False
    format: str | None = None
    structured_outputs: StructuredOutputsParams | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format is not None:
            object.__setattr__(self, "structured_outputs", parse_output_format(self.format))
        if self.system is not None and not isinstance(self.system, str):
            raise InvalidRequestError(f"system: must be a string, got {self.system!r}", param="system")
        if not isinstance(self.verbose, bool):
            raise InvalidRequestError(f"verbose: must be true or false, got {self.verbose!r}", param="verbose")
        self.sampling_params({})  # validates every sampling value

    @classmethod
    def from_table(cls, table: Mapping[str, Any], source: str = "[chat]") -> ChatSettings:
        """Settings from a config file's ``[chat]`` table.

        Raises:
            ConfigError: an unknown key or an invalid value, naming ``source``.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in table:
            if key not in names:
                raise ConfigError(f"{source}: unknown key {key!r} in [chat]; the keys are {', '.join(names)}")
        try:
            return cls(**table)
        except InvalidRequestError as e:
            raise ConfigError(f"{source}: [chat] {e}") from None

    def replace(self, **changes: Any) -> ChatSettings:
        """A validated copy with some fields changed (None values are ignored: not given)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def set_from_text(self, key: str, text: str) -> ChatSettings:
        """Parse and apply ``/set KEY VALUE``; ``default`` (or ``none``, ``off``) unsets the value.

        Raises:
            InvalidRequestError: an unknown key or a value that is not valid for it (one line).
        """
        if key not in SETTABLE:
            raise InvalidRequestError(f"cannot set {key!r}; settable: {', '.join(SETTABLE)}", param=key)
        if text.lower() in UNSET_WORDS:
            return dataclasses.replace(self, **{key: None})
        kind = SETTABLE[key]
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise InvalidRequestError(f"{key} must be {what}, got {text!r}", param=key) from None
        try:
            return dataclasses.replace(self, **{key: value})
        except InvalidRequestError as e:
            raise InvalidRequestError(f"{key} {str(e).removeprefix(key + ': ')}", param=key) from None

    def sampling_params(self, model_defaults: Mapping[str, Any]) -> SamplingParams:
        """The SamplingParams of one reply: what was set, else the model's defaults, else the fallbacks.

        Raises:
            InvalidRequestError: a value out of range.
        """
        values: dict[str, Any] = {}
        for key in ("temperature", "top_p", "top_k"):
            mine = getattr(self, key)
            if mine is not None:
                values[key] = mine
            elif model_defaults.get(key) is None and model_defaults.get("do_sample") is not False:
                values[key] = CHAT_FALLBACKS[key]
        return SamplingParams(
            max_tokens=self.max_tokens, seed=self.seed, structured_outputs=self.structured_outputs, **values
        ).resolve(model_defaults)

    def origin(self, key: str, model_defaults: Mapping[str, Any]) -> str:
        """Where the value of ``key`` comes from: "set", "model default", "rusteeze default" or "off"."""
        if getattr(self, key) is not None:
            return "set"
        if key in CHAT_FALLBACKS:
            has_model_default = model_defaults.get(key) is not None or model_defaults.get("do_sample") is False
            return "model default" if has_model_default else "rusteeze default"
        return "default"
