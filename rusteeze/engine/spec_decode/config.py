"""SpeculativeConfig: the validated ``[speculative]`` table of an EngineConfig."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rusteeze.errors import ConfigError

METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    """How the engine proposes tokens for the model to verify (off when an EngineConfig has none).

    Attributes:
        method: "ngram" (prompt lookup: continue a repeated n-gram of the prompt and output) or
            "draft" (greedy drafts of ``draft_model``, a smaller model with the same tokenizer).
        num_speculative_tokens: k, the most tokens proposed per sequence and step.
        prompt_lookup_min: the shortest n-gram that may match (ngram).
        prompt_lookup_max: the longest n-gram tried first (ngram).
        draft_model: the draft model (draft).
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"speculative.method = {self.method!r} is not valid; use one of: {', '.join(METHODS)}")
        _check_int("num_speculative_tokens", self.num_speculative_tokens, 1, 16)
        _check_int("prompt_lookup_min", self.prompt_lookup_min, 1, 64)
        _check_int("prompt_lookup_max", self.prompt_lookup_max, 1, 64)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ConfigError(
                f"speculative.prompt_lookup_min = {self.prompt_lookup_min} is larger than "
                f"speculative.prompt_lookup_max = {self.prompt_lookup_max}; make min <= max"
            )
        if self.draft_model is not None and (not isinstance(self.draft_model, str) or not self.draft_model.strip()):
            raise ConfigError(f"speculative.draft_model = {self.draft_model!r} must be a model name, directory or file")
        if self.method == "draft" and self.draft_model is None:
            raise ConfigError(
                "speculative.method = 'draft' needs speculative.draft_model: a smaller model with the same tokenizer"
            )
        if self.method != "draft" and self.draft_model is not None:
            raise ConfigError("speculative.draft_model is only used with method = 'draft'; remove it for 'ngram'")

    @classmethod
    def coerce(cls, value: Any) -> SpeculativeConfig | None:
        """A SpeculativeConfig from itself, a mapping (the TOML table / ``LLM(speculative={...})``) or None.

        Raises:
            ConfigError: not a table, an unknown key (named), or an invalid value.
        """
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"speculative = {value!r} must be a table such as {{method = 'ngram'}}")
        names = tuple(f.name for f in fields(cls))
        for key in value:
            if key not in names:
                raise ConfigError(f"unknown key {key!r} in speculative; known keys: {', '.join(names)}")
        return cls(**value)


def _check_int(key: str, value: Any, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"speculative.{key} = {value!r} must be an integer")
    if not minimum <= value <= maximum:
        raise ConfigError(f"speculative.{key} = {value!r} must be between {minimum} and {maximum}")
