"""SamplingParams: how one request turns logits into tokens, validated on construction.

Fields left as ``None`` are *unset*: :meth:`SamplingParams.resolve` fills them
from the model's ``generation_config.json`` defaults, then from the built-in
neutral values (temperature 1, no top-k/top-p/min-p, no penalties). This module
imports nothing heavy (no torch) so ``import rusteeze`` stays light.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rusteeze.errors import InvalidRequestError
from rusteeze.structured.params import StructuredOutputsParams

MAX_LOGPROBS = 20

# The neutral value of each field that generation_config.json may set.
_NEUTRAL: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _fail(name: str, message: str) -> None:
    raise InvalidRequestError(f"{name}: {message}", param=name)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one request (the vLLM / OpenAI names).

    Attributes:
        n: number of completions for the prompt; they share the prompt's KV blocks.
        temperature: 0 means greedy; None takes the model's default (else 1).
        top_p: nucleus mass in (0, 1]; None → default (else 1, off).
        top_k: keep the k most likely tokens; 0 or -1 turns it off.
        min_p: drop tokens whose probability is below min_p × the top probability.
        repetition_penalty: > 0; divides positive (multiplies negative) logits of
            tokens in the prompt or output (HF / CTRL rule); 1 is off.
        presence_penalty: in [-2, 2]; subtracted once from each token already generated.
        frequency_penalty: in [-2, 2]; subtracted once per occurrence in the output.
        seed: per-request random seed: same seed and prompt → same tokens,
            whatever else shares the batch (completion ``i`` of ``n`` uses ``seed + i``).
        max_tokens: most tokens to generate; None means up to the context length.
            Values beyond the context are clamped to what fits.
        min_tokens: EOS and ``stop_token_ids`` are masked until this many tokens exist.
        stop: strings that end the completion; the text is cut before the match.
        stop_token_ids: token ids that end the completion (kept in ``token_ids``).
        ignore_eos: keep generating past the model's EOS tokens.
        include_stop_str_in_output: keep the matched stop string in the text.
        logprobs: return the log-probability of each sampled token and this many
            top alternatives (0 = the sampled token only); None = off. They come
            from the *raw* model distribution (log-softmax of the logits before
            bias, penalties, temperature and truncation), as in vLLM v1.
        prompt_logprobs: the same for each prompt token (first token: None).
        logit_bias: token id → bias in [-100, 100] added to the logits.
        skip_special_tokens: leave special tokens out of the decoded text.
        structured_outputs: a constraint the output must satisfy (JSON schema, any
            JSON object, regex, choice or Lark grammar), enforced by masking the
            logits of every step; a mapping of its fields is accepted too. The
            request ends with "stop" once the constraint is complete; ``min_tokens``
            does not apply to it (the grammar decides where the output ends).
    """

    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if self.structured_outputs is not None:
            # Frozen: a mapping becomes the typed value once, here.
            object.__setattr__(self, "structured_outputs", StructuredOutputsParams.from_value(self.structured_outputs))
        self._validate()

    def _validate(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            _fail("n", f"must be an integer >= 1, got {self.n!r}")
        if self.temperature is not None and (not _is_num(self.temperature) or self.temperature < 0):
            _fail("temperature", f"must be a number >= 0, got {self.temperature!r}")
        if self.top_p is not None and (not _is_num(self.top_p) or not 0 < self.top_p <= 1):
            _fail("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < -1):
            _fail("top_k", f"must be an integer >= 0 (0 or -1 disables it), got {self.top_k!r}")
        if self.min_p is not None and (not _is_num(self.min_p) or not 0 <= self.min_p <= 1):
            _fail("min_p", f"must be in [0, 1], got {self.min_p!r}")
        if self.repetition_penalty is not None and (
            not _is_num(self.repetition_penalty) or self.repetition_penalty <= 0
        ):
            _fail("repetition_penalty", f"must be a number > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or not -2 <= v <= 2):
                _fail(name, f"must be in [-2, 2], got {v!r}")
        if self.seed is not None and not _is_int(self.seed):
            _fail("seed", f"must be an integer, got {self.seed!r}")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            _fail("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            _fail("min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _fail("min_tokens", f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if stops is not None and (
            not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops)
        ):
            _fail("stop", f"must be a non-empty string or a list of them, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
            _is_int(t) and t >= 0 for t in self.stop_token_ids
        ):
            _fail("stop_token_ids", f"must be a list of token ids >= 0, got {self.stop_token_ids!r}")
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_LOGPROBS):
                _fail(name, f"must be an integer in [0, {MAX_LOGPROBS}], got {v!r}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                _fail("logit_bias", f"must map token ids to biases, got {self.logit_bias!r}")
            for k, v in self.logit_bias.items():
                if not _is_int(k) or k < 0:
                    _fail("logit_bias", f"keys must be token ids >= 0, got {k!r}")
                if not _is_num(v) or not -100 <= v <= 100:
                    _fail("logit_bias", f"bias of token {k} must be in [-100, 100], got {v!r}")

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings as a list (empty when none)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def greedy(self) -> bool:
        """True when sampling is argmax (temperature 0, after :meth:`resolve`)."""
        return self.temperature == 0

    def resolve(self, defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        """Return a copy with every unset field filled in.

        Args:
            defaults: the model's generation defaults (``generation_config.json``:
                temperature, top_p, top_k, min_p, repetition_penalty, ...).
                Unknown keys and values that would not validate are ignored, and
                ``do_sample: false`` means greedy, as in transformers.

        Returns:
            SamplingParams whose temperature, top_p, top_k, min_p and penalties
            are all set; ``top_k == -1`` is normalised to 0 (off).
        """
        defaults = dict(defaults or {})
        if defaults.get("do_sample") is False and self.temperature is None:
            defaults["temperature"] = 0.0
        changes: dict[str, Any] = {}
        for name, neutral in _NEUTRAL.items():
            if getattr(self, name) is not None:
                continue
            value = defaults.get(name)
            try:
                if value is not None:
                    dataclasses.replace(self, **{name: value})  # validates the default
            except InvalidRequestError:
                value = None
            changes[name] = neutral if value is None else value
        if (self.top_k if self.top_k is not None else changes.get("top_k")) == -1:
            changes["top_k"] = 0
        return dataclasses.replace(self, **changes)
