"""Progress lines for long prompts: a server that reads 8,000 tokens for minutes says so in its log.

While a request with at least ``MIN_PROMPT_TOKENS`` prompt tokens has produced no
output yet, its :class:`PrefillLog` logs (INFO, ``rusteeze.server``)

    request cmpl-…-0: read 2048 of 8192 prompt tokens

about every ``INTERVAL_S`` seconds, and once the first output arrives (the prompt
is read and the first token sampled)

    request cmpl-…-0: read 8192 prompt tokens in 41.3 s

Progress is the prompt's first sequence's ``num_computed_tokens``, read from the
event loop while the engine thread writes it: a plain int, so a read is at worst
one step old (and 0 again after a preemption, which is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from rusteeze.engine.request import Request

log = logging.getLogger("rusteeze.server")

MIN_PROMPT_TOKENS = 2048  # shorter prompts are read in seconds: no lines
INTERVAL_S = 5.0  # seconds between two progress lines of one request
TICK_S = 1.0  # how often the watcher looks
CLOCK: Callable[[], float] = time.monotonic  # seconds; tests replace it


class PrefillLog:
    """Watches one request's prompt being read and logs its progress.

    Args:
        request: the engine request (its first sequence computes the prompt).
        clock: seconds, monotonic (default: ``CLOCK``).
    """

    def __init__(self, request: Request, clock: Callable[[], float] | None = None) -> None:
        self.request = request
        self.clock = clock or CLOCK
        self.start = self.clock()
        self.last_line = self.start
        self._task: asyncio.Future | None = None

    @property
    def num_prompt_tokens(self) -> int:
        """Tokens in the prompt."""
        return self.request.seqs[0].num_prompt_tokens

    def poll(self) -> None:
        """Log a progress line when ``INTERVAL_S`` passed since the last one (or since the start)."""
        now = self.clock()
        if now - self.last_line < INTERVAL_S:
            return
        self.last_line = now
        total = self.num_prompt_tokens
        done = min(self.request.seqs[0].num_computed_tokens, total)
        log.info("request %s: read %d of %d prompt tokens", self.request.request_id, done, total)

    def start_watching(self) -> None:
        """Poll every ``TICK_S`` seconds on the running event loop until :meth:`finish` or :meth:`stop`."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(TICK_S)
                self.poll()

        self._task = asyncio.get_running_loop().create_task(watch())

    def stop(self) -> None:
        """Stop watching without a final line (the request failed or was abandoned)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def finish(self) -> None:
        """The first output arrived: stop watching and log how long reading the prompt took."""
        self.stop()
        seconds = self.clock() - self.start
        log.info(
            "request %s: read %d prompt tokens in %.1f s", self.request.request_id, self.num_prompt_tokens, seconds
        )


@contextlib.contextmanager
def prefill_log(request: Request, clock: Callable[[], float] | None = None):
    """A watching :class:`PrefillLog` for a long prompt (None for a short one), stopped on exit."""
    if len(request.prompt_token_ids) < MIN_PROMPT_TOKENS:
        yield None
        return
    watcher = PrefillLog(request, clock)
    watcher.start_watching()
    try:
        yield watcher
    finally:
        watcher.stop()
