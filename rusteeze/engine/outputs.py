"""What the engine returns: RequestOutput and CompletionOutput, shaped as in vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability in the raw model distribution.

    Attributes:
        logprob: natural-log probability.
        rank: 1 for the most likely token.
        decoded_token: the token's text on its own.
    """

    logprob: float
    rank: int
    decoded_token: str


@dataclass
class CompletionOutput:
    """One of a request's ``n`` completions, as of the latest step.

    Nothing here is copied per step: ``token_ids`` and ``logprobs`` are the completion's own
    lists, which later outputs of the same request extend. A finished output's lists never
    change again; to keep a snapshot of an unfinished one, copy them (``list(c.token_ids)``).

    Attributes:
        index: which completion (0 .. n-1).
        text: all text generated so far (stop strings cut off).
        token_ids: all generated token ids (a final EOS / stop token included).
        finish_reason: None while running, then "stop" | "length" | "abort".
        stop_reason: the stop string or stop token id that ended it, if any.
        logprobs: per generated token, ``{token_id: Logprob}`` with the sampled
            token and the top alternatives; None unless asked for.
        cumulative_logprob: sum of the sampled tokens' logprobs (None unless asked).
        delta_text: the text added since the previous output (what a stream sends).
        delta_token_ids: the token ids added since the previous output.
        delta_logprobs: the logprobs of ``delta_token_ids`` (None unless asked).
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[dict[int, Logprob]] | None = None

    @property
    def finished(self) -> bool:
        """True once this completion has a finish reason."""
        return self.finish_reason is not None


@dataclass(frozen=True)
class Usage:
    """Token counts of a request (OpenAI's ``usage``; cached = prefix-cache hits)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class RequestMetrics:
    """Wall-clock times (``time.time()`` seconds) of a request's life.

    Attributes:
        arrival_time: when it was added.
        first_token_time: when its first token was sampled (None before).
        finish_time: when it finished (None before).
    """

    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """A request's state after a step (or at the end).

    Attributes:
        request_id: the id given to (or made by) ``add_request``.
        prompt: the prompt text (the rendered chat text for chat requests; None for token ids).
        prompt_token_ids: the prompt's token ids.
        prompt_logprobs: per prompt token ``{token_id: Logprob}`` (first: None), when asked.
        outputs: the ``n`` completions, in index order.
        finished: True when every completion has finished.
        usage: token counts so far.
        metrics: timing.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    usage: Usage
    metrics: RequestMetrics
