"""ModelRunner: one scheduled step → flat tensors → one forward → sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from rusteeze.engine.block_manager import BlockManager
from rusteeze.engine.kv_cache import KVCache, poison_blocks
from rusteeze.engine.sampler import Logprobs, SamplingBatch, gather_logprobs, sample
from rusteeze.engine.scheduler import SchedulerOutput
from rusteeze.engine.spec_decode.rollback import poison_slots, rejected_slots
from rusteeze.engine.spec_decode.verify import verify_drafts
from rusteeze.models.attention import AttentionMetadata

if TYPE_CHECKING:
    from rusteeze.engine.cuda_graphs import DecodeGraphRunner

PROMPT_LOGPROBS_ROWS = 256  # prompt positions scored per lm_head call


@dataclass
class RunnerOutput:
    """Per scheduled sequence (in schedule order): sampled token and its logprobs, or None.

    A sequence that verified draft tokens gets lists instead: the kept drafts then the sampled
    token, and one Logprobs per token (or None when it asked for none).
    """

    sampled: list[int | list[int] | None]
    logprobs: list[Logprobs | list[Logprobs] | None]


class ModelRunner:
    """Runs the model over the paged KV cache, one forward pass per step.

    Args:
        model: the decoder (``forward(input_ids, positions, kv_caches, meta)``
            and ``compute_logits(hidden)``).
        kv_caches: one (k_cache, v_cache) per layer.
        block_size: tokens per block.
        vocab_size: logits width V.
        device: where the model and the cache live.
        block_manager: the cache's BlockManager; in the poisoned-KV debug mode
            (``block_manager.poison``, see ``rusteeze.engine.kv_cache``) the runner
            NaN-fills the blocks it reports before each forward, points the
            block-table entries that must not be read at the always-NaN extra
            block, and raises on NaN logits.
    """

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[KVCache],
        block_size: int,
        vocab_size: int,
        device: torch.device,
        block_manager: BlockManager | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.block_manager = block_manager
        self.decode_graphs: DecodeGraphRunner | None = None  # CUDA graphs for decode steps (engine/cuda_graphs.py)

    @property
    def poison(self) -> bool:
        """True in the poisoned-KV debug mode (a block manager in that mode and a cache with the NaN block)."""
        bm = self.block_manager
        return bm is not None and bm.poison and self.kv_caches[0][0].shape[0] > bm.num_blocks

    @property
    def unread_block(self) -> int:
        """Block id for block-table entries never read: released or padding (the NaN block in debug mode)."""
        return self.block_manager.num_blocks if self.poison else 0

    def prepare(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flat batch of the step.

        Returns:
            input_ids [T] int64, positions [T] int64, and the AttentionMetadata.
        """
        bs, scheduled = self.block_size, out.scheduled
        ids, pos, slots = [], [], []
        q_lens = np.array([s.num_new_tokens for s in scheduled], dtype=np.int32)  # [B]
        max_blocks = max(len(s.seq.block_table) for s in scheduled)
        unread = self.unread_block
        tables = np.full((len(scheduled), max_blocks), unread, dtype=np.int32)  # [B, max_blocks]
        for b, s in enumerate(scheduled):
            table = np.asarray(s.seq.block_table, dtype=np.int64)
            p = np.arange(s.start, s.start + s.num_new_tokens, dtype=np.int64)  # [q_len]
            ids.append(s.seq.token_ids[s.start : s.start + s.num_new_tokens - len(s.draft_token_ids)])
            ids.append(s.draft_token_ids)
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            # Released (sliding-window) blocks are -1; attention masks them, so any valid id does.
            tables[b, : len(table)] = np.where(table < 0, unread, table)
        cu = np.zeros(len(scheduled) + 1, dtype=np.int32)  # [B + 1]
        np.cumsum(q_lens, out=cu[1:])
        seq_lens = np.array([s.start + s.num_new_tokens for s in scheduled], dtype=np.int32)  # [B]
        dev = self.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.from_numpy(cu).to(dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev),
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(dev),
            block_tables=torch.from_numpy(tables).to(dev),
        )
        input_ids = torch.tensor([t for chunk in ids for t in chunk], dtype=torch.long, device=dev)
        return input_ids, torch.from_numpy(np.concatenate(pos)).to(dev), meta

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> RunnerOutput:
        """Compute the step, sample, and record prompt logprobs.

        Logits are computed only for the last token of each sequence that
        reaches its end this step (and each of its draft tokens, which are
        verified: ``spec_decode.verify``), plus, for requests asking for
        ``prompt_logprobs``, the prompt positions not yet scored (those are
        appended to ``seq.prompt_logprobs`` here, so a recomputation after
        preemption does not score them twice).
        """
        scheduled = out.scheduled
        if self.block_manager is not None:
            poison_blocks(self.kv_caches, self.block_manager.take_poisoned())
        input_ids, positions, meta = self.prepare(out)
        graphs = self.decode_graphs
        hidden = graphs.forward(input_ids, positions, meta) if graphs is not None else None  # None: run eagerly
        if hidden is None:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, H]
        offsets = meta.cu_seqlens_q.tolist()
        # A sampling sequence's rows: its last token, then each draft token (speculative decoding).
        samplers = [(b, s) for b, s in enumerate(scheduled) if s.samples]
        row_ranges = [range(offsets[b + 1] - 1 - len(s.draft_token_ids), offsets[b + 1]) for b, s in samplers]
        sample_rows = [r for rr in row_ranges for r in rr]
        prompt_rows, prompt_targets, prompt_owners = [], [], []
        for b, s in enumerate(scheduled):
            seq = s.seq
            if seq.prompt_logprobs is None:
                continue
            # Row of position p scores token p + 1; positions already scored are skipped.
            first = max(s.start, len(seq.prompt_logprobs) - 1)
            last = min(s.start + s.num_new_tokens, seq.num_prompt_tokens - 1)
            for p in range(first, last):
                prompt_rows.append(offsets[b] + p - s.start)
                prompt_targets.append(seq.token_ids[p + 1])
                prompt_owners.append(seq)
        rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
        logits = self.model.compute_logits(hidden[rows])  # [S, V] float32
        if self.poison:
            self._check_logits(logits, [s.seq for (_, s), rr in zip(samplers, row_ranges, strict=True) for _ in rr])
        tokens, logprobs = self._sample(logits, [s for _, s in samplers])
        # Prompt rows are scored a slice at a time: a whole 2,048-token prompt over a
        # 152k vocabulary would otherwise hold ~1.2 GB of float32 logits at once.
        for first in range(0, len(prompt_rows), PROMPT_LOGPROBS_ROWS):
            part = slice(first, first + PROMPT_LOGPROBS_ROWS)
            idx = torch.tensor(prompt_rows[part], dtype=torch.long, device=self.device)
            part_logits = self.model.compute_logits(hidden[idx])  # [<= PROMPT_LOGPROBS_ROWS, V] float32
            if self.poison:
                self._check_logits(part_logits, [])
            targets = torch.tensor(prompt_targets[part], dtype=torch.long, device=self.device)
            owners = prompt_owners[part]
            num = [seq.params.prompt_logprobs for seq in owners]
            for seq, entry in zip(owners, gather_logprobs(part_logits, targets, num), strict=True):
                seq.prompt_logprobs.append(entry)
        it_tok, it_lp = iter(tokens), iter(logprobs)
        sampled = [next(it_tok) if s.samples else None for s in scheduled]
        lps = [next(it_lp) if s.samples else None for s in scheduled]
        return RunnerOutput(sampled, lps)

    def _sample(self, logits: torch.Tensor, samplers: list) -> tuple[list, list]:
        """Tokens and logprobs of the sampling sequences from their logits rows [S, V] (in order).

        Sequences with drafts are verified (``verify_drafts``: lists of tokens); the others take
        the plain sampler on their one row.
        """
        if not samplers:
            return [], []
        if not any(s.draft_token_ids for s in samplers):
            batch = SamplingBatch.from_sequences([s.seq for s in samplers], self.vocab_size, self.device)
            tok, logprobs = sample(logits, batch)
            return tok.tolist(), logprobs
        firsts, row = [], 0
        for s in samplers:
            firsts.append(row)
            row += len(s.draft_token_ids) + 1
        spec = [i for i, s in enumerate(samplers) if s.draft_token_ids]
        plain = [i for i, s in enumerate(samplers) if not s.draft_token_ids]
        tokens: list = [None] * len(samplers)
        logprobs: list = [None] * len(samplers)
        spec_rows = [firsts[i] + j for i in spec for j in range(len(samplers[i].draft_token_ids) + 1)]
        emitted, spec_lps = verify_drafts(
            logits[torch.tensor(spec_rows, dtype=torch.long, device=self.device)],
            [samplers[i].seq for i in spec],
            [samplers[i].draft_token_ids for i in spec],
            self.vocab_size,
        )
        for i, tok_list, lp in zip(spec, emitted, spec_lps, strict=True):
            tokens[i], logprobs[i] = tok_list, lp
        if plain:
            batch = SamplingBatch.from_sequences([samplers[i].seq for i in plain], self.vocab_size, self.device)
            rows = torch.tensor([firsts[i] for i in plain], dtype=torch.long, device=self.device)
            tok, lps = sample(logits[rows], batch)
            for i, t, lp in zip(plain, tok.tolist(), lps, strict=True):
                tokens[i], logprobs[i] = t, lp
        if self.poison:  # the rejected drafts' slots: NaN, so that a read of one shows
            self._poison_rejected([samplers[i] for i in spec], emitted)
        return tokens, logprobs

    def _poison_rejected(self, sampling: list, emitted: list[list[int]]) -> None:
        """Debug mode: NaN-fill the slots written for drafts that were rejected."""
        bs, slots = self.block_size, []
        for s, tokens in zip(sampling, emitted, strict=True):
            end = s.start + s.num_new_tokens  # one past the last draft's position
            slots += rejected_slots(s.seq.block_table, end - len(s.draft_token_ids) + len(tokens) - 1, end, bs)
        poison_slots(self.kv_caches, slots)

    def _check_logits(self, logits: torch.Tensor, owners: list) -> None:
        """Debug mode: NaN logits mean some sequence read a KV slot it never wrote.

        ``owners``: the sequence of each sampled row (prompt-logprobs rows have none).
        """
        bad = torch.isnan(logits).any(dim=-1).nonzero().flatten().tolist()
        if not bad:
            return
        who = [repr(owners[r]) if r < len(owners) else f"prompt-logprobs row {r}" for r in bad]
        raise RuntimeError("poisoned KV read (RUSTEEZE_DEBUG_POISON_KV): NaN logits for " + ", ".join(who[:4]))
