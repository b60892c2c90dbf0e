"""Scheduler: continuous batching with chunked prefill, prefix-cache hits and preemption.

There is no prefill phase and no decode phase (vLLM v1's rule). Each sequence
has ``num_tokens`` tokens of which ``num_computed_tokens`` are in the KV cache;
a step gives each scheduled sequence some of its uncomputed tokens, within
``max_num_batched_tokens`` per step and ``max_num_seqs`` running sequences.
A decode is the case "one uncomputed token"; a chunked prefill is "many, cut
to the remaining token budget". So one step freely mixes decodes of running
sequences with (pieces of) prompts of newly admitted ones.

Order and fairness. Running sequences are served first, in admission order;
then waiting ones, first come first served (the queue head blocks the rest).
When a running sequence needs a block and none is free, the most recently
admitted running sequence is preempted: its blocks are freed, its
``num_computed_tokens`` reset, and it goes back to the *front* of the waiting
queue to be recomputed (its generated tokens are kept, so greedy output is
unchanged). Older sequences always make progress, so nothing deadlocks as long
as one sequence of ``max_model_len`` tokens fits in the cache (the engine
checks that). No one is admitted in a step that preempted.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from rusteeze.engine.block_manager import NULL_BLOCK, BlockManager
from rusteeze.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    """One sequence's share of a step.

    Attributes:
        seq: the sequence.
        start: its ``num_computed_tokens`` when scheduled: the position of its first new token.
        num_new_tokens: tokens computed this step (positions ``start .. start + num_new_tokens - 1``),
            the draft tokens included.
        draft_token_ids: speculative decoding: proposed tokens computed after the sequence's last
            token (the last ``len(draft_token_ids)`` of the new tokens), verified by the runner.
    """

    seq: Sequence
    start: int
    num_new_tokens: int
    draft_token_ids: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        """True when this step reaches the sequence's last token, so a token is sampled."""
        return self.start + self.num_new_tokens - len(self.draft_token_ids) == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """What one step computes: running sequences first, then newly admitted ones."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        """Total new tokens in the step."""
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        """True when nothing was scheduled."""
        return not self.scheduled


class Scheduler:
    """Decides which tokens of which sequences each step computes.

    Args:
        block_manager: owner of the KV blocks.
        max_num_seqs: most sequences running at once.
        max_num_batched_tokens: most new tokens in one step (>= 1).
    """

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        assert max_num_seqs > 0 and max_num_batched_tokens > 0
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._seq_ids = itertools.count()  # this scheduler's (its engine's) sequence ids

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS) and give it its id."""
        assert seq.status is SequenceStatus.WAITING and not seq.block_table and seq.seq_id < 0
        seq.seq_id = next(self._seq_ids)
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        """True while any sequence waits or runs."""
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _shared_blocks(self, seq: Sequence) -> list[int] | None:
        """Blocks a waiting sequence starts from, or None when it must wait for its parent.

        Completion ``i > 0`` of an ``n > 1`` request waits until completion 0
        has computed the prompt, then references its full prompt blocks (found
        in the prefix cache, or taken from the parent's table when caching is
        off) instead of computing them again.
        """
        bm, parent = self.block_manager, seq.parent
        if (
            parent is not None
            and not parent.is_finished
            and (parent.status is SequenceStatus.WAITING or parent.num_computed_tokens < parent.num_prompt_tokens)
        ):
            return None
        if seq.params.prompt_logprobs is not None:
            return []  # every prompt position's logits are needed
        if bm.enable_prefix_caching:
            return bm.find_cached_prefix(seq)
        if parent is None or parent.status is not SequenceStatus.RUNNING:
            return []
        k = min(parent.num_computed_tokens, seq.num_prompt_tokens, seq.num_tokens - 1) // bm.block_size
        blocks = parent.block_table[:k]
        return [] if NULL_BLOCK in blocks else blocks

    def schedule(self, drafts: dict[int, list[int]] | None = None) -> SchedulerOutput:
        """Pick this step's work; allocates the blocks it needs (preempting if it must).

        Args:
            drafts: speculative decoding: proposed tokens by ``seq_id`` for running sequences with
                one uncomputed token. They are computed after it, cut to the token budget, and
                dropped before anyone is preempted for their blocks.
        """
        out, budget, bm = SchedulerOutput(), self.max_num_batched_tokens, self.block_manager
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            uncomputed = seq.num_tokens - seq.num_computed_tokens
            draft = drafts.get(seq.seq_id, []) if drafts else []
            num_new = min(uncomputed + len(draft), budget)
            draft = draft[: max(num_new - uncomputed, 0)]
            assert num_new > 0, "a running sequence always has an uncomputed token"
            while not bm.allocate_slots(seq, num_new):
                if draft:  # drafts are given up before anyone's blocks
                    num_new, draft = num_new - len(draft), []
                    continue
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, num_new, draft))
                budget -= num_new
                i += 1
                continue
            break
        while not out.preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            computed = self._shared_blocks(seq)
            if computed is None:
                break
            num_computed = len(computed) * bm.block_size
            num_new = min(seq.num_tokens - num_computed, budget)
            if not bm.allocate_slots(seq, num_new, computed):
                break
            self.waiting.popleft()
            self.running.append(seq)
            seq.status = SequenceStatus.RUNNING
            seq.num_computed_tokens = num_computed
            if seq.num_output_tokens == 0:
                seq.num_cached_tokens = num_computed
            out.scheduled.append(ScheduledSeq(seq, num_computed, num_new))
            budget -= num_new
        return out

    def update(self, out: SchedulerOutput, sampled: list[int | None]) -> list[Sequence]:
        """Apply a step's results.

        Args:
            out: the step's schedule.
            sampled: per scheduled sequence, in order, the sampled token id (a list of
                tokens for a sequence that verified drafts: the kept drafts, then the sampled
                one), or None where the step did not reach its last token.

        Returns:
            The sequences that received a token (finished ones included; their
            blocks are already freed).
        """
        assert len(sampled) == len(out.scheduled)
        bm, changed = self.block_manager, []
        for s, token in zip(out.scheduled, sampled, strict=True):
            seq = s.seq
            if seq.is_finished:  # aborted while the step ran
                continue
            num_appended, samples = 0, s.samples  # (s.samples reads num_tokens: taken before appending)
            if samples:
                assert token is not None
                for t in [token] if isinstance(token, int) else token:
                    seq.append_token(t)
                    num_appended += 1
                    if seq.finish_reason is not None:
                        break
            # The KV cache now holds the step's real tokens and the drafts that were kept (every
            # appended token but the last); rejected drafts lie past num_computed_tokens.
            draft = s.draft_token_ids
            seq.num_computed_tokens = s.start + s.num_new_tokens - len(draft) + max(num_appended - 1, 0)
            bm.register_full_blocks(seq)
            bm.release_out_of_window(seq)
            if draft:
                bm.free_trailing(seq, seq.num_tokens)
            if not samples:
                continue
            changed.append(seq)
            if seq.finish_reason is not None:
                self.finish(seq, seq.finish_reason)
        return changed

    def finish(self, seq: Sequence, reason: str) -> None:
        """Stop a sequence (stop condition or abort) and free its blocks at once."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
