"""Speculator: which sequences propose draft tokens this step, how many, and how well they fare.

Each step, before scheduling, every running sequence in the decode state (one uncomputed
token) that is eligible may get draft tokens from the n-gram proposer or the draft model
(``draft.py``). The scheduler adds them
to the sequence's step (and may cut them to its token budget or drop them for lack of KV
blocks); the runner verifies them (``verify.verify_drafts``).

How many: a cost model. A step over ``T`` tokens costs about ``F + c·T`` (``F``: the per-step
overhead, ``fixed_cost_tokens = F / c`` in token-equivalents; on CPUs the integer tiles take
rows in blocks of 4-5 per loaded weight vector, so a 5-token step costs ~1.9x a 1-token one
(SmolLM2) and F/c ~ 3; on GPUs a decode step is bound by reading the weights, so F/c is in the
hundreds). Among ``B`` decoding sequences a draft token then costs ``beta = 1 / (1 + F / (c·B))``
of a plain step's share, and with per-token acceptance ``a`` a proposal of ``k`` drafts yields
``(1 - a^(k+1)) / (1 - a)`` tokens for ``1 + (beta + r)·k`` cost, where ``r`` is the draft
model's size relative to the model (0 for n-grams). Each sequence drafts the ``k`` (0 to
``num_speculative_tokens``, and never past ``max_tokens``) that maximizes that ratio, with ``a``
estimated from its last ``WINDOW`` verified proposals (plus an optimistic prior, so a new
sequence tries). ``k = 0`` means drafting does not pay: the sequence pauses (``PAUSE`` steps,
doubling after each failed retry up to ``MAX_PAUSE``) and then tries afresh. So free chat, where
few n-grams repeat, runs as plain decoding, and a large CPU batch (beta ~ 1) does not draft.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.engine.spec_decode.draft import DraftProposer, load_draft
from rusteeze.engine.spec_decode.ngram import propose_ngram

WINDOW = 8  # verified proposals a sequence's acceptance is estimated from
MIN_EVIDENCE = 3  # proposals verified before the estimate may stop a sequence from drafting
PRIOR_ACCEPTANCE = 0.8  # prior of the per-token acceptance
PRIOR_WEIGHT = 2  # ... worth this many judged draft tokens
PAUSE = 8  # steps without proposals after drafting stopped paying
MAX_PAUSE = 128  # longest pause (the pause doubles after each failed retry)
FIXED_COST_TOKENS = {"cpu": 3.0, "cuda": 256.0}  # F / c per device type (measured on SmolLM2; see docs)


MIN_GAIN = 1.05  # drafting must promise this many times plain decoding's tokens per unit of cost


def best_num_drafts(acceptance: float, beta: float, k_max: int) -> int:
    """The number of drafts ``k`` in ``1 .. k_max`` with the most expected tokens per unit of cost (0: none pays)."""
    best, best_gain, expected = 0, MIN_GAIN, 1.0
    for k in range(1, k_max + 1):
        expected += acceptance**k  # tokens emitted: 1 + a + ... + a^k
        gain = expected / (1 + beta * k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best


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

    @property
    def acceptance(self) -> float:
        """Estimated probability that a draft token is accepted, given the ones before it were.

        A proposal of ``d`` drafts with ``a`` accepted judged ``a + 1`` tokens when ``a < d`` (the
        rest were never judged) and ``d`` otherwise: the geometric model's estimate, with a prior.
        """
        accepted = sum(a for a, _ in self.outcomes)
        judged = sum(a + (a < d) for a, d in self.outcomes)
        return (accepted + PRIOR_WEIGHT * PRIOR_ACCEPTANCE) / (judged + PRIOR_WEIGHT)


class Speculator:
    """Proposes drafts for running sequences and keeps the acceptance counters.

    Args:
        config: the ``[speculative]`` settings.
        fixed_cost_tokens: a step's fixed cost in token-equivalents (``FIXED_COST_TOKENS`` of the
            device type).

    Attributes:
        num_draft_tokens: drafts verified so far.
        num_accepted_tokens: drafts accepted so far.
        num_verify_steps: sequence-steps that verified at least one draft.
    """

    def __init__(
        self,
        config: SpeculativeConfig,
        fixed_cost_tokens: float = FIXED_COST_TOKENS["cpu"],
        drafter: DraftProposer | None = None,
        draft_cost: float = 0.0,
    ) -> None:
        self.config = config
        self.fixed_cost_tokens = fixed_cost_tokens
        self.drafter = drafter
        self.draft_cost = draft_cost
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.num_verify_steps = 0
        self._states: dict[int, _SeqState] = {}

    @classmethod
    def create(cls, engine_config: Any, loaded: Any, max_model_len: int) -> Speculator:
        """The Speculator of an engine: the cost model of its device type (GPUs: as CUDA), the draft model loaded.

        Raises:
            ConfigError: the draft model cannot be loaded or has another vocabulary.
        """
        config = engine_config.speculative
        fixed = FIXED_COST_TOKENS.get(loaded.device.type, FIXED_COST_TOKENS["cuda"])
        if config.method != "draft":
            return cls(config, fixed)
        draft = load_draft(config.draft_model, loaded, engine_config)
        drafter = DraftProposer(draft, engine_config.block_size, engine_config.kv_cache_memory, max_model_len)
        ratio = drafter.num_params / max(sum(p.numel() for p in loaded.model.parameters()), 1)
        return cls(config, fixed, drafter, ratio)

    def propose(self, running: list[Sequence]) -> dict[int, list[int]]:
        """Draft tokens by ``seq_id`` for the running sequences that speculate this step."""
        cfg = self.config
        decoding = [s for s in running if s.num_tokens - s.num_computed_tokens == 1]
        beta = 1.0 / (1.0 + self.fixed_cost_tokens / max(len(decoding), 1)) + self.draft_cost
        drafts: dict[int, list[int]] = {}
        wanted: list[tuple[Sequence, int]] = []  # draft model: (sequence, k), drafted together
        for seq in decoding:
            k_max = min(cfg.num_speculative_tokens, seq.max_tokens - seq.num_output_tokens - 1)
            if k_max <= 0 or not eligible(seq):
                continue
            state = self._states.get(seq.seq_id)
            if state is None:
                state = self._states[seq.seq_id] = _SeqState()
            if state.pause_left > 0:
                state.pause_left -= 1
                continue
            k = best_num_drafts(state.acceptance, beta, k_max)
            if k == 0 and len(state.outcomes) < MIN_EVIDENCE and best_num_drafts(1.0, beta, k_max):
                k = 1  # drafts could pay, and too little evidence yet to give up: try one at a time
            if k == 0:  # drafting does not pay for this sequence now: pause, then try afresh
                state.pause_left, state.next_pause = state.next_pause, min(2 * state.next_pause, MAX_PAUSE)
                state.outcomes.clear()
                continue
            if self.drafter is not None:
                wanted.append((seq, k))
                continue
            tokens = np.asarray(seq.token_ids, dtype=np.int64)  # [L]
            draft = propose_ngram(tokens, cfg.prompt_lookup_min, cfg.prompt_lookup_max, k)
            if draft:
                drafts[seq.seq_id] = draft
        if self.drafter is not None:
            drafts = self.drafter.propose(wanted)
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
        if state is not None:
            state.outcomes.append((num_accepted, num_drafted))
            if num_accepted == num_drafted:
                state.next_pause = PAUSE  # drafting pays again: a later pause starts short

    def end_step(self) -> None:
        """After a step or an abort: the draft model's cache lets go of finished sequences."""
        if self.drafter is not None:
            self.drafter.release_finished()

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
