"""Attention metadata: how a flat, unpadded batch maps onto the paged KV cache."""

from dataclasses import dataclass
from functools import cached_property

import torch

from rusteeze.kernels.torch_ops import StepPlan


@dataclass
class AttentionMetadata:
    """Describes one forward pass over a flat batch of T tokens from B sequences.

    Invariant: sequence ``b`` owns the query rows
    ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``, and those rows are the *last*
    ``q_len`` tokens of its ``seq_lens[b]``-token context. Earlier tokens of the
    context (a prefix-cache hit, an earlier prefill chunk, the tokens already
    decoded) are read from the cache; the new tokens are written to it through
    ``slot_mapping`` before attention runs. There is no separate prefill or
    decode phase: a decode step is simply ``q_len == 1``.

    Attributes:
        cu_seqlens_q: [B + 1] int32 query offsets into the flat batch.
        seq_lens: [B] int32 context length of each sequence (cached + new).
        slot_mapping: [T] int64 flat cache slot (block * block_size + offset) of
            each new token; -1 skips the write (padding).
        block_tables: [B, max_blocks] int32 physical block of each logical block.
        plan: the torch kernels' index work for this step (built on first use,
            shared by every layer, gone with the metadata); the model's forward
            runs inside ``with meta.plan.active():``. The tensors above are
            never edited in place once a forward has used them.
    """

    cu_seqlens_q: torch.Tensor
    seq_lens: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor

    @cached_property
    def plan(self) -> StepPlan:
        """The step's :class:`~rusteeze.kernels.torch_ops.StepPlan` (cheap to make; filled lazily)."""
        return StepPlan(self.cu_seqlens_q, self.seq_lens, self.slot_mapping, self.block_tables)

    @property
    def num_seqs(self) -> int:
        """Number of sequences B."""
        return self.seq_lens.shape[0]

    def last_token_indices(self) -> torch.Tensor:
        """[B] int64 row of each sequence's last query token in the flat batch."""
        return self.cu_seqlens_q[1:].long() - 1


def contiguous_metadata(
    prompt_lens: list[int], block_size: int, device: torch.device | str = "cpu"
) -> tuple[AttentionMetadata, int]:
    """Metadata for a first forward over fresh prompts, each in its own run of blocks.

    A convenience for running a model outside the engine (tests, perplexity):
    sequence ``b`` gets blocks ``[offset_b, offset_b + ceil(len_b / block_size))``.

    Returns:
        The metadata and the number of cache blocks it needs.
    """
    blocks_per_seq = [(n + block_size - 1) // block_size for n in prompt_lens]
    max_blocks = max(blocks_per_seq)
    tables = torch.zeros(len(prompt_lens), max_blocks, dtype=torch.int32)
    slots = []
    first = 0
    for b, (n, nb) in enumerate(zip(prompt_lens, blocks_per_seq, strict=True)):
        tables[b, :nb] = torch.arange(first, first + nb, dtype=torch.int32)
        slots.append(torch.arange(n) + first * block_size)
        first += nb
    lens = torch.tensor(prompt_lens, dtype=torch.int32)
    cu = torch.zeros(len(prompt_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    meta = AttentionMetadata(
        cu_seqlens_q=cu.to(device),
        seq_lens=lens.to(device),
        slot_mapping=torch.cat(slots).to(device),
        block_tables=tables.to(device),
    )
    return meta, first
