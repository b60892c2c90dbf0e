"""Sequence: the scheduler's unit of work (one completion of one request)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch

from rusteeze.sampling import SamplingParams

if TYPE_CHECKING:
    from rusteeze.engine.penalty_counts import PenaltyCounts
    from rusteeze.structured.compiler import GrammarMatcher


class SequenceStatus(enum.Enum):
    """Where a sequence is: waiting for blocks, running, or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One completion: prompt + output token ids and the state around them.

    The scheduler's single rule (as in vLLM v1): there is no prefill or decode
    phase. A sequence has ``num_tokens`` tokens and the KV of the first
    ``num_computed_tokens`` of them is in the cache; each step computes some of
    the rest. When a step brings ``num_computed_tokens`` up to ``num_tokens``
    the logits of the last token are sampled and one token is appended, so a
    running sequence then has exactly one uncomputed token (a "decode").

    Attributes:
        seq_id: unique within its engine, increasing: a larger id was queued
            later. Given by the engine's scheduler when it queues the sequence
            (-1 before): ids belong to an engine, no process-wide counter.
        request_id: the request this completion belongs to.
        index: which of the request's ``n`` completions this is.
        token_ids: prompt followed by generated tokens.
        num_prompt_tokens: length of the prompt.
        num_computed_tokens: tokens whose keys and values are in the cache.
        num_cached_tokens: prompt tokens found in the prefix cache at admission.
        block_table: physical block of each logical block; ``-1`` marks a block
            released because it slid out of the attention window.
        block_hashes: prefix-cache hash of each full block, in order.
        num_registered_blocks: leading blocks already offered to the prefix cache.
        num_released_blocks: leading blocks released by the sliding window.
        params: the request's sampling parameters, resolved (no unset fields).
        max_tokens: generation limit, clamped to the context length.
        eos_token_ids: tokens that end the completion unless ``ignore_eos``.
        parent: for completion ``i > 0`` of an ``n > 1`` request, completion 0,
            whose prompt blocks it shares.
        generator: the torch.Generator this completion samples from: its own,
            seeded by the request's seed, or its engine's (seeded by the
            engine's ``seed``); None outside an engine (torch's global one).
        finish_reason: "stop" | "length" | "abort" once finished.
        logprobs: per generated token, ``{token_id: (logprob, rank)}``.
        prompt_logprobs: per prompt token (the first is None), like ``logprobs``.
        penalty_counts: the sampler's incremental token counts (a
            ``PenaltyCounts``), made the first time the sequence samples with a
            repetition, presence or frequency penalty; None otherwise.
        grammar: the structured-output matcher (``rusteeze.structured``) when the
            request has a constraint: it has consumed exactly the output tokens
            (tokens are consumed once, when appended; a recompute after
            preemption appends nothing, so it consumes nothing).
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        index: int = 0,
        max_tokens: int | None = None,
        eos_token_ids: tuple[int, ...] = (),
        parent: Sequence | None = None,
    ) -> None:
        assert prompt_token_ids, "a sequence needs at least one prompt token"
        self.seq_id = -1
        self.request_id = request_id
        self.index = index
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_registered_blocks = 0
        self.num_released_blocks = 0
        self.status = SequenceStatus.WAITING
        self.params = params
        self.max_tokens = max_tokens if max_tokens is not None else (params.max_tokens or 1 << 62)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.parent = parent
        self.generator: torch.Generator | None = None
        self.finish_reason: str | None = None
        self.logprobs: list[dict[int, tuple[float, int]]] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[dict[int, tuple[float, int]] | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        self.penalty_counts: PenaltyCounts | None = None
        self.grammar: GrammarMatcher | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, status={self.status.value})"
        )

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        """True once the sequence has stopped (for any reason)."""
        return self.status is SequenceStatus.FINISHED

    def is_end_token(self, token_id: int) -> bool:
        """True for a stop token id, or an EOS token unless ``ignore_eos``."""
        return token_id in self.params.stop_token_ids or (not self.params.ignore_eos and token_id in self.eos_token_ids)

    def append_token(self, token_id: int) -> None:
        """Append a sampled token and set ``finish_reason`` when a stop condition holds.

        Checks, in order: the grammar is complete, or a stop token id or (unless
        ``ignore_eos``) an EOS token once ``min_tokens`` exist → "stop";
        ``max_tokens`` reached → "length". Stop *strings* are the engine's job
        (they need the text).
        """
        self.token_ids.append(token_id)
        n = self.num_output_tokens
        grammar_complete = self.grammar is not None and self.grammar.advance(token_id)
        if grammar_complete or (n >= self.params.min_tokens and self.is_end_token(token_id)):
            self.finish_reason = "stop"
        elif n >= self.max_tokens:
            self.finish_reason = "length"
