"""Speculator: which sequences propose draft tokens this step, and how well proposals fare.

Each step, before scheduling, every running sequence in the decode state (one uncomputed
token) that is eligible gets up to ``k'`` draft tokens from the n-gram proposer, where ``k'``
is ``num_speculative_tokens`` cut so that ``max_tokens`` cannot be exceeded even if every
draft and the bonus token are kept. The scheduler adds the drafts to the sequence's step
(and may cut them to its token budget or drop them for lack of KV blocks); the runner
verifies them (``verify.verify_drafts``).

Adaptive back-off. A proposal that is rejected still costs its positions in the forward
pass. Each sequence keeps the outcome of its last ``WINDOW`` verified proposals; when they
accepted fewer than ``MIN_ACCEPTANCE`` of the drafted tokens, the sequence stops proposing
for a pause (``PAUSE`` steps, doubling after each failed retry up to ``MAX_PAUSE``), then
tries again. So free chat, where few n-grams repeat, runs (nearly) as plain decoding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.engine.spec_decode.ngram import propose_ngram

WINDOW = 4  # verified proposals a sequence's acceptance rate is judged on
MIN_ACCEPTANCE = 0.3  # below this fraction of drafted tokens accepted, a sequence pauses
PAUSE = 8  # steps without proposals after the first low-acceptance window
MAX_PAUSE = 128  # longest pause (the pause doubles after each low window)


def eligible(seq: Sequence) -> bool:
    """True when ``seq``'s next-token distribution does not depend on the tokens accepted before it.

    Repetition/presence/frequency penalties and a pending ``min_tokens`` change the distribution
    with every token, and structured output needs its grammar to advance token by token; those
    sequences decode without speculation.
    """
    p = seq.params
    return (
        p.repetition_penalty == 1
        and not p.presence_penalty
        and not p.frequency_penalty
        and seq.num_output_tokens >= p.min_tokens
        and getattr(p, "structured_outputs", None) is None
    )


@dataclass
class _SeqState:
    """One sequence's recent acceptance and pause."""

    outcomes: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # (accepted, drafted) per proposal
    pause_left: int = 0
    next_pause: int = PAUSE


class Speculator:
    """Proposes drafts for running sequences and keeps the acceptance counters.

    Args:
        config: the ``[speculative]`` settings.

    Attributes:
        num_draft_tokens: drafts verified so far.
        num_accepted_tokens: drafts accepted so far.
        num_verify_steps: sequence-steps that verified at least one draft.
    """

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.num_verify_steps = 0
        self._states: dict[int, _SeqState] = {}

    def propose(self, running: list[Sequence]) -> dict[int, list[int]]:
        """Draft tokens by ``seq_id`` for the running sequences that speculate this step."""
        cfg = self.config
        drafts: dict[int, list[int]] = {}
        for seq in running:
            if seq.num_tokens - seq.num_computed_tokens != 1 or not eligible(seq):
                continue
            k = min(cfg.num_speculative_tokens, seq.max_tokens - seq.num_output_tokens - 1)
            if k <= 0:
                continue
            state = self._states.get(seq.seq_id)
            if state is None:
                state = self._states[seq.seq_id] = _SeqState()
            if state.pause_left > 0:
                state.pause_left -= 1
                continue
            tokens = np.asarray(seq.token_ids, dtype=np.int64)  # [L]
            draft = propose_ngram(tokens, cfg.prompt_lookup_min, cfg.prompt_lookup_max, k)
            if draft:
                drafts[seq.seq_id] = draft
        if len(self._states) > 2 * len(running) + 16:  # forget finished sequences now and then
            live = {seq.seq_id for seq in running}
            self._states = {i: s for i, s in self._states.items() if i in live}
        return drafts

    def record(self, seq: Sequence, num_drafted: int, num_accepted: int) -> None:
        """Account one verified proposal of ``seq``: ``num_accepted`` of its ``num_drafted`` drafts kept."""
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        self.num_verify_steps += 1
        state = self._states.get(seq.seq_id)
        if state is None:
            return
        state.outcomes.append((num_accepted, num_drafted))
        if len(state.outcomes) < WINDOW:
            return
        accepted = sum(a for a, _ in state.outcomes)
        drafted = sum(d for _, d in state.outcomes)
        if accepted < MIN_ACCEPTANCE * drafted:
            state.pause_left, state.next_pause = state.next_pause, min(2 * state.next_pause, MAX_PAUSE)
            state.outcomes.clear()
        elif accepted >= 2 * MIN_ACCEPTANCE * drafted:
            state.next_pause = PAUSE

    def stats(self) -> dict[str, float]:
        """Counters for ``Engine.stats``: drafted and accepted tokens, acceptance rate, mean accepted length."""
        steps = self.num_verify_steps
        return {
            "spec_decode_num_draft_tokens": self.num_draft_tokens,
            "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
            "spec_decode_num_verify_steps": steps,
            "spec_decode_acceptance_rate": self.num_accepted_tokens / self.num_draft_tokens
            if self.num_draft_tokens
            else 0.0,
            # Tokens emitted per verifying sequence-step: accepted drafts plus the one sampled token.
            "spec_decode_mean_accepted_length": (self.num_accepted_tokens + steps) / steps if steps else 0.0,
        }
