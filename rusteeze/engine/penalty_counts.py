"""Per-sequence token counts for the repetition, presence and frequency penalties.

The penalties need, for every row of a step, which tokens the prompt holds and
how often each token occurs in the output. Rebuilding those [V] vectors from
the token lists every step costs O(length) per sequence per step; instead each
penalized sequence keeps its own vectors (made the first time it samples with
a penalty) and only the tokens appended since the last step are added.

Invariant: ``counted`` is how many output tokens ``output_counts`` holds, and
they are ``seq.output_token_ids[:counted]``. :meth:`PenaltyCounts.sync` brings
the vectors up to the sequence's current output by adding the new tail (the
usual case: one token per step, several with speculative decoding). Tokens
are never removed from a sequence in place today; if the output ever becomes
shorter than ``counted`` (a rolled-back draft), sync recounts from scratch so
the vectors can never go stale. A preempted sequence keeps its tokens (it is
recomputed, not regenerated), so its counts stay valid.
"""

from __future__ import annotations

import torch

from rusteeze.engine.sequence import Sequence


class PenaltyCounts:
    """Prompt seen-mask and output occurrence counts of one sequence.

    Attributes:
        output_counts: [V] float32, occurrences of each token in the output.
        prompt_seen: [V] bool, token occurs in the prompt (None until asked for
            by :meth:`prompt_mask`: only the repetition penalty needs it).
        counted: output tokens already in ``output_counts``.
    """

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.output_counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)  # [V]
        self.prompt_seen: torch.Tensor | None = None
        self.counted = 0

    def append(self, token_ids: list[int]) -> None:
        """Count ``token_ids`` as appended to the output (any number: 1 per step, k when speculating)."""
        if not token_ids:
            return
        idx = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [n]
        self.output_counts.index_add_(0, idx, torch.ones(idx.shape, dtype=torch.float32, device=self.device))
        self.counted += len(token_ids)

    def sync(self, seq: Sequence) -> None:
        """Bring the counts up to ``seq``'s current output: add the new tail (recount if it shrank)."""
        num_out = seq.num_output_tokens
        if num_out < self.counted:
            self.output_counts.zero_()
            self.counted = 0
        if num_out > self.counted:
            self.append(seq.token_ids[seq.num_prompt_tokens + self.counted :])

    def prompt_mask(self, seq: Sequence) -> torch.Tensor:
        """[V] bool: the tokens of ``seq``'s prompt (built once; the prompt never changes)."""
        if self.prompt_seen is None:
            idx = torch.tensor(seq.token_ids[: seq.num_prompt_tokens], dtype=torch.long, device=self.device)
            seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            self.prompt_seen = seen.index_fill_(0, idx, True)
        return self.prompt_seen


def penalty_counts_of(seq: Sequence, vocab_size: int, device: torch.device) -> PenaltyCounts:
    """``seq``'s counts, made on first use and synced to its current output."""
    counts = seq.penalty_counts
    if counts is None or counts.vocab_size != vocab_size or counts.device != torch.device(device):
        counts = seq.penalty_counts = PenaltyCounts(vocab_size, torch.device(device))
    counts.sync(seq)
    return counts
