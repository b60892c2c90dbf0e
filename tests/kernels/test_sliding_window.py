"""Sliding-window attention over a cache whose out-of-window blocks are gone (Mistral-style).

The block manager releases a sequence's blocks once no future query can see
them: their table entries become -1 (the runner may pass any block id there,
one that now belongs to another sequence), and their slots are reused. Here
every cache slot that no query of the batch may see holds NaN: released
blocks, the foreign block 0 they may point at, the head of the first live
block before the window, and the unwritten tail. Reading any of them into a
result, even under a mask (0 · NaN = NaN), shows.
"""

import functools
import math

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn, reference_attention

from rusteeze.kernels import triton_ops

FOREIGN = 0  # a block owned by someone else; never one of the batch's live blocks


def windowed_batch(specs, block_size, hq, hk, dim, window, released_entry, dtype, seed=0):
    """A batch whose sequences have slid past their window.

    Sequence ``b`` has computed ``ctx - q_len`` tokens before this step, so (the
    block manager's rule) its blocks below ``(ctx - q_len - window + 1) // block_size``
    are released: table entry ``released_entry``, contents NaN. Only keys at
    positions ``>= ctx - q_len - window + 1`` (the first query's window) are
    written; every other slot is NaN.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_of = [math.ceil(ctx / block_size) for ctx, _ in specs]
    num_blocks = sum(blocks_of) + 3
    free = [b for b in torch.randperm(num_blocks, generator=gen).tolist() if b != FOREIGN]
    k_cache = torch.full((num_blocks, block_size, hk, dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.full((len(specs), max(blocks_of) + 2), -1, dtype=torch.int32)
    keys, values = [], []
    for b, (ctx, q_len) in enumerate(specs):
        first = max(0, ctx - q_len - window + 1)  # first key any query of this step sees
        released = first // block_size
        assert released == max(0, ctx - q_len - window + 1) // block_size
        tables[b, :released] = released_entry
        for logical in range(released, blocks_of[b]):
            tables[b, logical] = free.pop()
        k_seq = torch.randn(ctx, hk, dim, generator=gen).to(dtype)
        v_seq = torch.randn(ctx, hk, dim, generator=gen).to(dtype)
        for j in range(first, ctx):
            k_cache[tables[b, j // block_size], j % block_size] = k_seq[j]
            v_cache[tables[b, j // block_size], j % block_size] = v_seq[j]
        keys.append(k_seq)
        values.append(v_seq)
    q = randn(sum(q_len for _, q_len in specs), hq, dim, dtype=dtype, seed=seed + 1)
    cu = torch.tensor([0] + [q_len for _, q_len in specs]).cumsum(0).to(torch.int32)
    seq_lens = torch.tensor([ctx for ctx, _ in specs], dtype=torch.int32)
    return q, *(t.to(DEVICE) for t in (k_cache, v_cache, cu, seq_lens, tables)), keys, values


CASES = {
    # name: (specs [(context, new queries)], block_size, Hq, Hk, D, window)
    # chunk past released blocks + decodes of different spans + a whole prompt longer than the window
    "chunks-and-decodes": ([(23, 7), (40, 1), (13, 13), (21, 1), (9, 1)], 4, 4, 2, 16, 5),
    # window wider than a block, not a multiple of it; a chunk whose window starts mid-block
    "wide-window": ([(45, 6), (38, 1), (30, 12)], 8, 2, 1, 16, 11),
    # decode only: every span padded to the widest, released heads and foreign tails hidden
    "decode-only": ([(17, 1), (33, 1), (4, 1)], 4, 3, 3, 8, 6),
}


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("released_entry", [-1, FOREIGN], ids=["released-minus-1", "released-foreign-block"])
@pytest.mark.parametrize("case", list(CASES))
def test_sliding_window_never_reads_released_or_hidden_slots(ops, dtype, released_entry, case):
    specs, block_size, hq, hk, dim, window = CASES[case]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = windowed_batch(
        specs, block_size, hq, hk, dim, window, released_entry, dtype, seed=len(case)
    )
    attention = ops.paged_attention
    if ops is triton_ops:
        attention = functools.partial(attention, block_n=16)  # key tiles that straddle the window start
    out = attention(q, k_cache, v_cache, cu, seq_lens, tables, dim**-0.5, window)
    assert_close(out, reference_attention(q, keys, values, specs, dim**-0.5, window), dtype)


def test_triton_split_k_over_released_blocks():
    """Split-K shares whose key tiles start before the window agree with the reference too."""
    specs = [(70, 1), (50, 9)]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = windowed_batch(
        specs, 4, 2, 1, 16, 13, FOREIGN, torch.float32, seed=3
    )
    out = triton_ops.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.25, 13, num_splits=3, block_n=16)
    assert_close(out, reference_attention(q, keys, values, specs, 0.25, 13), torch.float32)
