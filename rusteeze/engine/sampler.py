"""Sampler: logits → tokens for a whole batch at once (no Python loop over the vocabulary).

Order of operations (per row; rows differ only in their parameters):

0. structured output: on rows whose sequence has a grammar, tokens the grammar
   does not allow next are set to -inf (rusteeze/structured/bitmask.py; rows
   without one are untouched, and nothing is done when no row has one). Such
   rows skip the ``min_tokens`` ban below: the grammar decides where they end;
1. logit_bias is added; EOS and stop_token_ids are masked while the
   completion is shorter than ``min_tokens``;
2. penalties: repetition (HF/CTRL rule, over prompt and output tokens), then
   presence and frequency (OpenAI rule, over output tokens); the token counts
   are kept per sequence and updated with each step's new tokens
   (engine/penalty_counts.py), never rebuilt from the token lists;
3. greedy rows (temperature 0) take the argmax here;
4. the rest: temperature, top-k, top-p, min-p (transformers' order), then one
   draw from the softmax with the exponential-race trick
   ``argmax(p / E), E ~ Exp(1)``, which needs no sort and no cumsum. Each row
   draws ``E`` from its sequence's torch.Generator: a seeded request's own, so
   it gets the same tokens whatever else shares the batch, or else the engine's
   (seeded with the engine's ``seed``; rows sharing it draw as one block, in
   row order). Greedy rows draw nothing. Nothing here touches torch's global
   generator unless a sequence has no generator at all (one made outside an
   engine).

Logprobs are taken from the *raw* distribution: log-softmax of the model's
logits before step 1 (vLLM v1's default). A greedy token therefore has rank 1,
and a token removed by top-k still reports its model probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rusteeze.engine.penalty_counts import penalty_counts_of
from rusteeze.engine.sequence import Sequence
from rusteeze.sampling import SamplingParams
from rusteeze.structured.bitmask import GrammarMasks, apply_grammar_mask, grammar_masks

Logprobs = dict[int, tuple[float, int]]  # token id → (logprob, rank), rank 1 = most likely


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of one step as tensors ([B] each unless noted).

    Build with :meth:`from_sequences`; optional parts are None when no row uses them.
    """

    temperature: torch.Tensor  # [B] float32; 1 on greedy rows
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    top_k: torch.Tensor | None  # [B] int64, V where off
    top_p: torch.Tensor | None  # [B] float32
    min_p: torch.Tensor | None  # [B] float32
    repetition: torch.Tensor | None  # [B] float32
    presence: torch.Tensor | None  # [B] float32
    frequency: torch.Tensor | None  # [B] float32
    seen_prompt: torch.Tensor | None  # [B, V] bool: token occurs in the prompt
    output_counts: torch.Tensor | None  # [B, V] float32: occurrences in the output
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (rows, cols, values)
    banned: tuple[torch.Tensor, torch.Tensor] | None  # (rows, cols) set to -inf
    draws: list[tuple[list[int], torch.Generator | None]]  # sampling rows grouped by generator, first-row order
    num_logprobs: list[int | None]  # per row
    grammar: GrammarMasks | None = None  # structured-output bitmasks of the constrained rows

    @classmethod
    def from_sequences(cls, seqs: list[Sequence], vocab_size: int, device: torch.device) -> SamplingBatch:
        """Gather the parameters of the sequences that sample this step, in row order."""
        ps = [s.params for s in seqs]
        v = vocab_size

        def col(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        greedy = [p.temperature == 0 for p in ps]
        use_rep = any(p.repetition_penalty != 1 for p in ps)
        use_pf = any(p.presence_penalty or p.frequency_penalty for p in ps)
        seen_prompt = output_counts = None
        if use_rep or use_pf:
            # A penalized sequence keeps its own counts and adds only this step's new
            # tokens; rows without penalties get zeros (their penalties are no-ops).
            none_f = torch.zeros(v, dtype=torch.float32, device=device)  # [V]
            none_b = torch.zeros(v, dtype=torch.bool, device=device)  # [V]
            counts = [penalty_counts_of(s, v, device) if _penalized(s.params) else None for s in seqs]
            output_counts = torch.stack([none_f if c is None else c.output_counts for c in counts])  # [B, V]
            if use_rep:
                masks = [none_b if c is None else c.prompt_mask(s) for c, s in zip(counts, seqs, strict=True)]
                seen_prompt = torch.stack(masks)  # [B, V]
        bias = banned = None
        entries = [(i, tok, val) for i, p in enumerate(ps) for tok, val in (p.logit_bias or {}).items() if tok < v]
        if entries:
            b_rows, b_cols, b_vals = zip(*entries, strict=True)
            bias = (col(list(b_rows), torch.long), col(list(b_cols), torch.long), col(list(b_vals)))
        x_rows, x_cols = [], []
        for i, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens and s.grammar is None:
                ids = set(s.params.stop_token_ids) | (set() if s.params.ignore_eos else set(s.eos_token_ids))
                x_rows += [i] * len(ids)
                x_cols += sorted(ids)
        if x_rows:
            banned = (col(x_rows, torch.long), col(x_cols, torch.long))
        return cls(
            temperature=col([1.0 if g else p.temperature for g, p in zip(greedy, ps, strict=True)]),
            greedy=col(greedy, torch.bool),
            all_greedy=all(greedy),
            top_k=col([p.top_k if 0 < p.top_k < v else v for p in ps], torch.long)
            if any(0 < p.top_k < v for p in ps)
            else None,
            top_p=col([p.top_p for p in ps]) if any(p.top_p < 1 for p in ps) else None,
            min_p=col([p.min_p for p in ps]) if any(p.min_p > 0 for p in ps) else None,
            repetition=col([p.repetition_penalty for p in ps]) if use_rep else None,
            presence=col([p.presence_penalty for p in ps]) if use_pf else None,
            frequency=col([p.frequency_penalty for p in ps]) if use_pf else None,
            seen_prompt=seen_prompt,
            output_counts=output_counts,
            bias=bias,
            banned=banned,
            draws=_draw_groups(seqs, greedy),
            num_logprobs=[p.logprobs for p in ps],
            grammar=grammar_masks(seqs),
        )


def _penalized(p: SamplingParams) -> bool:
    """True when any of the count-based penalties is on."""
    return p.repetition_penalty != 1 or bool(p.presence_penalty) or bool(p.frequency_penalty)


def _draw_groups(seqs: list[Sequence], greedy: list[bool]) -> list[tuple[list[int], torch.Generator | None]]:
    """The non-greedy rows grouped by the generator they draw from (None: torch's global one)."""
    groups: dict[int, tuple[list[int], torch.Generator | None]] = {}
    for i, (s, g) in enumerate(zip(seqs, greedy, strict=True)):
        if not g:
            groups.setdefault(id(s.generator), ([], s.generator))[0].append(i)
    return list(groups.values())


def apply_penalties_and_bias(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Steps 1–2 on [B, V] float32 logits, in place; returns them."""
    if batch.bias is not None:
        rows, cols, vals = batch.bias
        logits.index_put_((rows, cols), vals, accumulate=True)
    if batch.banned is not None:
        logits[batch.banned] = float("-inf")
    if batch.repetition is not None:
        assert batch.seen_prompt is not None and batch.output_counts is not None
        seen = batch.seen_prompt | (batch.output_counts > 0)  # [B, V]
        rep = batch.repetition.unsqueeze(1)  # [B, 1]
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalized, logits, out=logits)
    if batch.frequency is not None:
        assert batch.presence is not None and batch.output_counts is not None
        counts = batch.output_counts
        logits -= batch.frequency.unsqueeze(1) * counts + batch.presence.unsqueeze(1) * (counts > 0)
    return logits


def apply_truncation(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on [B, V] float32 logits; returns new logits."""
    logits = logits / batch.temperature.unsqueeze(1)
    if batch.top_k is not None or batch.top_p is not None:
        srt, idx = logits.sort(dim=-1, descending=True)  # [B, V]
        ranks = torch.arange(srt.shape[1], device=srt.device).unsqueeze(0)  # [1, V]
        if batch.top_k is not None:
            srt = srt.masked_fill(ranks >= batch.top_k.unsqueeze(1), float("-inf"))
        if batch.top_p is not None:
            probs = srt.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # [B, V] mass of strictly more likely tokens
            cut = (mass_before > batch.top_p.unsqueeze(1)) & (batch.top_p.unsqueeze(1) < 1)
            srt = srt.masked_fill(cut, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, idx, srt)
    if batch.min_p is not None:
        probs = logits.softmax(dim=-1)
        floor = batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, list[Logprobs | None]]:
    """Pick one token per row.

    Args:
        logits: [B, V] float32 raw model logits (not modified).
        batch: the rows' parameters.

    Returns:
        [B] int64 token ids, and per row its Logprobs (the sampled token plus
        the top ``logprobs`` alternatives of the raw distribution) or None.
    """
    raw = logits
    logits = apply_penalties_and_bias(apply_grammar_mask(logits.clone(), batch.grammar), batch)
    tokens = logits.argmax(dim=-1)  # [B]
    if not batch.all_greedy:
        probs = apply_truncation(logits, batch).softmax(dim=-1)  # [B, V]
        sampled = (probs / _race(probs, batch.draws)).argmax(dim=-1)
        tokens = torch.where(batch.greedy, tokens, sampled)
    want = [k for k in batch.num_logprobs if k is not None]
    if not want:
        return tokens, [None] * len(batch.num_logprobs)
    return tokens, gather_logprobs(raw, tokens, batch.num_logprobs)


def _race(probs: torch.Tensor, draws: list[tuple[list[int], torch.Generator | None]]) -> torch.Tensor:
    """[B, V] Exp(1) variates for the sampling rows, each group from its generator (greedy rows: 1)."""
    if len(draws) == 1 and len(draws[0][0]) == probs.shape[0]:
        return torch.empty_like(probs).exponential_(generator=draws[0][1])  # one generator, every row
    race = torch.ones_like(probs)
    for rows, gen in draws:
        if len(rows) == 1:
            race[rows[0]].exponential_(generator=gen)
        else:
            block = torch.empty((len(rows), probs.shape[1]), dtype=probs.dtype, device=probs.device)
            race[torch.tensor(rows, device=probs.device)] = block.exponential_(generator=gen)
    return race


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor, num: list[int | None]) -> list[Logprobs | None]:
    """Logprob and rank of ``targets`` and the top-``num[i]`` tokens of each row.

    Args:
        logits: [N, V] raw logits.
        targets: [N] int64 token whose logprob is wanted in each row.
        num: per row, how many top alternatives (None: skip the row).
    """
    lp = logits.float().log_softmax(dim=-1)  # [N, V]
    tgt = lp.gather(1, targets.unsqueeze(1))  # [N, 1]
    rank = (lp > tgt).sum(dim=1) + 1  # [N]
    k = max((n for n in num if n is not None), default=0)
    top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], targets[:, None][:, :0])  # [N, k]
    tgt_l, rank_l, tok_l = tgt.squeeze(1).tolist(), rank.tolist(), targets.tolist()
    top_vl, top_il = top_v.tolist(), top_i.tolist()
    out: list[Logprobs | None] = []
    for i, n in enumerate(num):
        if n is None:
            out.append(None)
            continue
        entry = {t: (v, r + 1) for r, (t, v) in enumerate(zip(top_il[i][:n], top_vl[i][:n], strict=True))}
        entry[tok_l[i]] = (tgt_l[i], rank_l[i])
        out.append(entry)
    return out
