"""Rollback of rejected drafts in the KV cache.

Verification writes keys and values at every drafted position. After it, a sequence's
``num_computed_tokens`` counts only its kept tokens, so the slots of rejected drafts lie
past it: attention never reads them (a query at position ``p`` reads slots ``<= p``, and
the next step writes position ``num_computed_tokens`` before reading it). Blocks that hold
only rejected slots go back to the free list (``BlockManager.free_trailing``); they never
reach the prefix cache, which registers only blocks full of computed tokens. In the
poisoned-KV debug mode the rejected slots of kept blocks are NaN-filled, so a read of one
would show as NaN logits.
"""

from __future__ import annotations

import torch

from rusteeze.engine.kv_cache import KVCache


def rejected_slots(block_table: list[int], first: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions ``first .. end - 1`` that still have a block in ``block_table``."""
    return [
        block_table[p // block_size] * block_size + p % block_size
        for p in range(first, end)
        if p // block_size < len(block_table) and block_table[p // block_size] >= 0
    ]


def poison_slots(kv_caches: list[KVCache], slots: list[int]) -> None:
    """NaN-fill the keys and values of ``slots`` in every layer (debug mode)."""
    if not slots:
        return
    idx = torch.tensor(slots, dtype=torch.long, device=kv_caches[0][0].device)
    for k_cache, v_cache in kv_caches:
        k_cache.view(-1, *k_cache.shape[2:]).index_fill_(0, idx, float("nan"))  # [num_blocks * block_size, Hk, D]
        v_cache.view(-1, *v_cache.shape[2:]).index_fill_(0, idx, float("nan"))
