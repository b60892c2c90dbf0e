"""ChatSession: a multi-turn conversation with one engine, kept out of the terminal so it can be tested.

`rusteeze chat` reads lines, hands slash commands to :meth:`ChatSession.command` and
everything else to :meth:`ChatSession.reply`, and prints what comes back. The session owns
the history, the settings and the statistics of the last reply; it steps a synchronous
Engine itself, one step at a time, so a reply can be stopped between two steps (the request
is aborted and its KV blocks freed before the next prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rusteeze.chat_commands import CommandResult, run_command
from rusteeze.chat_settings import ChatSettings
from rusteeze.errors import InvalidRequestError


@dataclass(frozen=True)
class ReplyStats:
    """Timing of one reply.

    Attributes:
        prompt_tokens: tokens of the rendered conversation.
        cached_tokens: of those, how many the prefix cache had already computed.
        completion_tokens: tokens generated.
        ttft: seconds from the request to its first token.
        duration: seconds from the request to its last token.
        finish_reason: "stop", "length" or "abort" (stopped by the user).
    """

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft: float | None
    duration: float
    finish_reason: str

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first, over the time after the first (None with < 2 tokens)."""
        if self.ttft is None or self.completion_tokens < 2 or self.duration <= self.ttft:
            return None
        return (self.completion_tokens - 1) / (self.duration - self.ttft)

    def summary(self) -> str:
        """One line: `TTFT 0.12 s (35 prompt tokens, 20 cached) · 42 tokens in 1.30 s, 33.6 tokens/s · stop`."""
        ttft = "TTFT n/a" if self.ttft is None else f"TTFT {self.ttft:.2f} s"
        cached = f", {self.cached_tokens} cached" if self.cached_tokens else ""
        rate = self.tokens_per_second
        speed = f", {rate:.1f} tokens/s" if rate is not None else ""
        plural = "" if self.completion_tokens == 1 else "s"
        return (
            f"{ttft} ({self.prompt_tokens} prompt tokens{cached}) · "
            f"{self.completion_tokens} token{plural} in {self.duration:.2f} s{speed} · {self.finish_reason}"
        )


class ChatSession:
    """A conversation with a model.

    Args:
        engine: a ``rusteeze.engine.engine.Engine`` that nobody else steps.
        settings: the initial system prompt and sampling settings.
        model_name: shown by ``/show``.
        model_source: where the model came from, shown by ``/show``.
    """

    def __init__(self, engine: Any, settings: ChatSettings, model_name: str = "", model_source: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.model_name = model_name
        self.model_source = model_source
        self.history: list[dict[str, str]] = []  # user and assistant turns, oldest first
        self.last_stats: ReplyStats | None = None
        self.dropped_messages = 0  # oldest turns dropped by the last reply to fit the context

    @property
    def model_defaults(self) -> dict[str, Any]:
        """The model's generation defaults (from generation_config.json)."""
        return self.engine.generation_defaults

    def messages(self) -> list[dict[str, str]]:
        """The conversation as sent to the model: the system prompt (if any), then the history."""
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + self.history

    @staticmethod
    def is_command(line: str) -> bool:
        """True when a line is a slash command rather than a message."""
        return line.lstrip().startswith("/")

    def command(self, line: str) -> CommandResult:
        """Run a slash command (`/help`, `/set`, `/show`, ...) and say what to print."""
        return run_command(self, line)

    def clear(self) -> None:
        """Forget the history (the system prompt and settings stay)."""
        self.history.clear()

    def reply(
        self,
        text: str,
        should_stop: Callable[[], bool] | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
    ) -> Iterator[str]:
        """Send a user message and stream the reply's text deltas.

        ``on_prefill(done, total)`` is called before the first engine step and after each step
        until the first token: ``done`` of the ``total`` prompt tokens are in the KV cache (a long
        prompt is prefilled in chunks of ``max_num_batched_tokens``), for a progress line.

        The user turn and the reply join the history when the reply ends. A reply that is
        stopped — ``should_stop()`` turns true between two engine steps, the caller stops
        iterating, or an exception (KeyboardInterrupt) interrupts it — is aborted in the engine
        (its blocks freed at once) and the exchange is left out of the history. When the
        conversation no longer fits the context, the oldest turns are dropped first
        (``dropped_messages`` says how many).

        Raises:
            InvalidRequestError: the message alone does not fit the context, or the sampling
                settings are invalid (nothing is added to the history).
        """
        params = self.settings.sampling_params(self.model_defaults)
        self.history.append({"role": "user", "content": text})
        try:
            request = self._make_request(params)
        except InvalidRequestError:
            self.history.pop()
            raise
        engine, rid = self.engine, request.request_id
        start = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        final = None
        engine.add(request)
        seq = request.seqs[0]
        try:
            while final is None and rid in engine.requests:
                if on_prefill is not None and first is None:
                    on_prefill(min(seq.num_computed_tokens, seq.num_prompt_tokens), seq.num_prompt_tokens)
                if should_stop is not None and should_stop():
                    break
                for out in engine.step():
                    if out.request_id != rid:
                        continue
                    completion = out.outputs[0]
                    if first is None and completion.token_ids:
                        first = time.perf_counter()
                    if out.finished:
                        final = out
                    if completion.delta_text:
                        parts.append(completion.delta_text)
                        yield completion.delta_text
        finally:
            if final is None:
                final = engine.abort(rid)
            self.history.pop()
            if final is not None:
                completion = final.outputs[0]
                if completion.finish_reason != "abort":
                    self.history += [
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": "".join(parts)},
                    ]
                self.last_stats = ReplyStats(
                    prompt_tokens=final.usage.prompt_tokens,
                    cached_tokens=final.usage.cached_tokens,
                    completion_tokens=final.usage.completion_tokens,
                    ttft=None if first is None else first - start,
                    duration=time.perf_counter() - start,
                    finish_reason=completion.finish_reason or "abort",
                )

    def _make_request(self, params: Any) -> Any:
        """Make the engine request for the current history, dropping the oldest turns while it is too long."""
        tokenizer, limit = self.engine.tokenizer, self.engine.max_model_len
        # Room for some output: a reply squeezed into the last few tokens of the context is no reply.
        reserve = min(params.max_tokens or 256, 256, limit // 4)
        self.dropped_messages = 0
        while len(self.history) > 1 and len(tokenizer.encode_chat(self.messages())) + reserve > limit:
            drop = 2 if self.history[1]["role"] == "assistant" else 1  # a user turn with its answer
            del self.history[:drop]
            self.dropped_messages += drop
        return self.engine.make_request(None, params, messages=self.messages())


class MultilineInput:
    """Collects a message typed over several lines between triple quotes (Ollama's convention).

    A line that starts with `\"\"\"` opens a block; the line that ends with `\"\"\"` closes it. The
    message is the text between them, newlines kept. `\"\"\"text\"\"\"` on one line is a message too.
    """

    QUOTES = '"""'

    def __init__(self) -> None:
        self._lines: list[str] | None = None

    @property
    def active(self) -> bool:
        """True inside an open block (the prompt shows `... `)."""
        return self._lines is not None

    def reset(self) -> None:
        """Forget an open block."""
        self._lines = None

    def feed(self, line: str) -> str | None:
        """Take one typed line; return the complete message, or None while a block is open."""
        q = self.QUOTES
        if self._lines is None:
            if not line.startswith(q):
                return line
            rest = line[len(q) :]
            if len(rest) >= len(q) and rest.endswith(q):
                return rest[: -len(q)]
            self._lines = [rest] if rest else []
            return None
        if line.endswith(q):
            self._lines.append(line[: -len(q)])
            text, self._lines = "\n".join(self._lines), None
            return text.strip("\n")
        self._lines.append(line)
        return None
