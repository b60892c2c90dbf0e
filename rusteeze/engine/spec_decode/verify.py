"""Verification: the target model's logits at every proposed position decide what is kept.

A speculating sequence is computed over ``k' + 1`` positions in one forward pass: its last
real token followed by the ``k'`` draft tokens ``d_0 .. d_{k'-1}``. Row ``i`` of its logits
is the model's distribution for the token after ``d_{i-1}`` (row 0: after the last real
token), so it judges ``d_i``; row ``k'`` gives the bonus token when every draft is kept.

* Greedy rows keep the longest prefix of drafts equal to the argmax, then add the argmax
  at the first mismatch (or the bonus): the tokens are exactly those of plain greedy decoding.
* Sampled rows use the rule of speculative sampling (Leviathan et al., Chen et al.): keep
  ``d_i`` with probability ``min(1, p(d_i) / q(d_i))``; at the first rejection sample from
  ``normalize(max(p - q, 0))``; after ``k'`` acceptances sample the bonus from ``p``. Each
  emitted token is then distributed exactly as ``p``. An n-gram proposal is a point mass
  (``q(d_i) = 1``), so ``d_i`` is kept with probability ``p(d_i)`` and the residual is ``p``
  with ``d_i`` removed. ``p`` is the row's distribution after bias, temperature, top-k,
  top-p and min-p, the same as the plain sampler's. Penalties and ``min_tokens`` change
  ``p`` with every accepted token, so sequences using them are not speculated (see
  ``speculator.eligible``).

Randomness comes from the sequence's own generator (or the engine's), drawn in sequence
order: a seeded request gets the same tokens on every run with the same proposals.
"""

from __future__ import annotations

import torch

from rusteeze.engine.sampler import (
    Logprobs,
    SamplingBatch,
    apply_penalties_and_bias,
    apply_truncation,
    gather_logprobs,
)
from rusteeze.engine.sequence import Sequence


def verify_drafts(
    logits: torch.Tensor, seqs: list[Sequence], drafts: list[list[int]], vocab_size: int
) -> tuple[list[list[int]], list[list[Logprobs] | None]]:
    """The tokens each speculating sequence emits this step.

    Args:
        logits: [R, V] float32 raw logits, ``R = sum(len(d) + 1 for d in drafts)``; the rows
            of one sequence are contiguous, in ``seqs`` order.
        seqs: the sequences.
        drafts: per sequence its draft tokens (may be empty: then it is a plain decode row).
        vocab_size: V.

    Returns:
        Per sequence, the emitted tokens (accepted drafts then one sampled token: 1 to
        ``len(d) + 1`` tokens), and their logprobs (from the raw logits, like the plain
        sampler's) or None when the request asked for none.
    """
    device = logits.device
    row_seqs = [seq for seq, d in zip(seqs, drafts, strict=True) for _ in range(len(d) + 1)]
    batch = SamplingBatch.from_sequences(row_seqs, vocab_size, device)
    processed = apply_penalties_and_bias(logits.clone(), batch)  # [R, V]
    argmax = processed.argmax(dim=-1).tolist()  # [R]
    probs = None if batch.all_greedy else apply_truncation(processed, batch).softmax(dim=-1)  # [R, V]
    draft_rows, draft_ids, first_rows = [], [], []
    row = 0
    for d in drafts:
        first_rows.append(row)
        draft_rows += range(row, row + len(d))
        draft_ids += d
        row += len(d) + 1
    p_of: dict[int, float] = {}  # row → the row's probability of its draft token (sampled rows)
    if probs is not None and draft_rows:
        rows_t = torch.tensor(draft_rows, dtype=torch.long, device=device)
        p_draft = probs[rows_t, torch.tensor(draft_ids, dtype=torch.long, device=device)].tolist()
        p_of = dict(zip(draft_rows, p_draft, strict=True))
    emitted: list[list[int]] = []
    for seq, d, first in zip(seqs, drafts, first_rows, strict=True):
        if seq.params.temperature == 0:
            emitted.append(_greedy(argmax[first : first + len(d) + 1], d))
        else:
            assert probs is not None
            p_kept = [p_of[first + i] for i in range(len(d))]
            emitted.append(_speculative_sample(probs, first, d, p_kept, seq.generator))
    lps: list[list[Logprobs] | None] = [None] * len(seqs)
    want = [i for i, seq in enumerate(seqs) if seq.params.logprobs is not None]
    if want:
        rows = [first_rows[i] + j for i in want for j in range(len(emitted[i]))]
        targets = [t for i in want for t in emitted[i]]
        num = [seqs[i].params.logprobs for i in want for _ in emitted[i]]
        flat = gather_logprobs(
            logits[torch.tensor(rows, dtype=torch.long, device=device)],
            torch.tensor(targets, dtype=torch.long, device=device),
            num,
        )
        at = 0
        for i in want:
            lps[i] = flat[at : at + len(emitted[i])]  # type: ignore[assignment]
            at += len(emitted[i])
    return emitted, lps


def _greedy(argmax: list[int], draft: list[int]) -> list[int]:
    """The argmax tokens up to and including the first that differs from the draft."""
    n = 0
    while n < len(draft) and argmax[n] == draft[n]:
        n += 1
    return argmax[: n + 1]


def _speculative_sample(
    probs: torch.Tensor, first: int, draft: list[int], p_draft: list[float], gen: torch.Generator | None
) -> list[int]:
    """Point-mass speculative sampling for one sequence (rows ``first ..`` of ``probs`` [R, V])."""
    if draft:
        u = torch.rand(len(draft), generator=gen, device=probs.device).tolist()  # [k']
        for i, (token, p, ui) in enumerate(zip(draft, p_draft, u, strict=True)):
            if ui >= p:  # rejected: sample from p without the draft token
                residual = probs[first + i].clone()  # [V]
                residual[token] = 0
                return [*draft[:i], _draw(residual, gen)]
    return [*draft, _draw(probs[first + len(draft)], gen)]


def _draw(weights: torch.Tensor, gen: torch.Generator | None) -> int:
    """One token from unnormalized [V] weights (the exponential race: ``argmax(w / E)``, E ~ Exp(1))."""
    race = torch.empty_like(weights).exponential_(generator=gen)
    return int((weights / race).argmax())
