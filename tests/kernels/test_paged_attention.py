"""Paged attention (decode, varlen prefill, chunked prefill, GQA, windows, split-K).

Both backends are checked against a per-query, per-head loop over each
sequence's keys in *logical* order: the reference never sees the block table,
so a wrong gather, a wrong causal/window bound or a wrong softmax all show.
Cache slots that hold no key are filled with NaN, so reading one shows too.
"""

import functools
import math

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn, reference_attention

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def make_batch(specs, block_size, hq, hk, dim, dtype, pad=0, seed=0, strided_q=False):
    """Random K/V per sequence scattered into shuffled cache blocks; empty slots hold NaN.

    Returns q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables and the
    per-sequence keys/values in logical order ([ctx, Hk, D] each).
    """
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil(ctx / block_size) for ctx, _ in specs]
    num_blocks = sum(need) + 2
    order = torch.randperm(num_blocks, generator=gen).tolist()
    k_cache = torch.full((num_blocks, block_size, hk, dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.full((len(specs), max(need) + 1), pad, dtype=torch.int32)
    keys, values = [], []
    for b, (ctx, _) in enumerate(specs):
        blocks, order = order[: need[b]], order[need[b] :]
        tables[b, : need[b]] = torch.tensor(blocks, dtype=torch.int32)
        k_seq = torch.randn(ctx, hk, dim, generator=gen).to(dtype)
        v_seq = torch.randn(ctx, hk, dim, generator=gen).to(dtype)
        for j in range(ctx):
            k_cache[blocks[j // block_size], j % block_size] = k_seq[j]
            v_cache[blocks[j // block_size], j % block_size] = v_seq[j]
        keys.append(k_seq)
        values.append(v_seq)
    total = sum(q_len for _, q_len in specs)
    if strided_q:  # q as a view of a fused qkv projection
        q = randn(total, (hq + 2 * hk) * dim, dtype=dtype, seed=seed + 1)[:, : hq * dim].view(total, hq, dim)
    else:
        q = randn(total, hq, dim, dtype=dtype, seed=seed + 1)
    cu = torch.tensor([0] + [q_len for _, q_len in specs]).cumsum(0).to(torch.int32)
    seq_lens = torch.tensor([ctx for ctx, _ in specs], dtype=torch.int32)
    tensors = [t.to(DEVICE) for t in (k_cache, v_cache, cu, seq_lens, tables)]
    return (q, *tensors, keys, values)


CASES = {
    # name: (specs [(context, new queries)], block_size, Hq, Hk, D, window, triton kwargs, extra)
    "decode-gqa-partial-blocks": ([(1, 1), (7, 1), (16, 1), (33, 1)], 8, 4, 2, 32, None, {}, {}),
    "prefill-varlen-strided-q": ([(5, 5), (17, 17), (1, 1)], 4, 2, 2, 24, None, {}, {"strided_q": True}),
    "chunked-prefill-mixed-decode": ([(20, 6), (30, 1), (9, 9), (12, 0)], 8, 8, 2, 16, None, {}, {}),
    "sliding-window-gqa3": ([(23, 7), (40, 1), (6, 6)], 4, 6, 2, 16, 5, {}, {}),
    "split-k-decode": ([(70, 1), (5, 1), (41, 1)], 16, 4, 1, 16, None, {"num_splits": 4, "block_n": 16}, {"pad": -1}),
    "split-k-chunk-window": ([(50, 20), (33, 1)], 8, 2, 1, 32, 17, {"num_splits": 3, "block_n": 16}, {}),
}


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_paged_attention_matches_reference(ops, dtype, case):
    specs, block_size, hq, hk, dim, window, tuning, extra = CASES[case]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = make_batch(
        specs, block_size, hq, hk, dim, dtype, seed=len(case), **extra
    )
    scale = dim**-0.5
    attention = ops.paged_attention
    if ops is triton_ops:
        attention = functools.partial(attention, **tuning)
    out = attention(q, k_cache, v_cache, cu, seq_lens, tables, scale, window)
    assert out.dtype == dtype
    assert_close(out, reference_attention(q, keys, values, specs, scale, window), dtype)


@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_split_k_agrees_with_unsplit(num_splits):
    """Any split factor, including more shares than key tiles, gives the same result."""
    specs = [(37, 1), (3, 1)]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = make_batch(specs, 8, 2, 2, 16, torch.float32, seed=9)
    out = triton_ops.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.25, num_splits=num_splits, block_n=16)
    assert_close(out, reference_attention(q, keys, values, specs, 0.25, None), torch.float32)


def _valid_args():
    return {
        "q": torch.zeros(3, 4, 16),
        "k_cache": torch.zeros(5, 4, 2, 16),
        "v_cache": torch.zeros(5, 4, 2, 16),
        "cu_seqlens_q": torch.tensor([0, 2, 3], dtype=torch.int32),
        "seq_lens": torch.tensor([2, 5], dtype=torch.int32),
        "block_tables": torch.zeros(2, 3, dtype=torch.int32),
    }


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        ({"q": torch.zeros(3, 3, 16)}, {}, "multiple of KV heads"),
        ({"q": torch.zeros(3, 4, 8)}, {}, "k_cache has shape"),
        ({"q": torch.zeros(3, 4, 16, dtype=torch.int32)}, {}, "q has dtype"),
        ({"v_cache": torch.zeros(5, 4, 1, 16)}, {}, "v_cache has shape"),
        ({"cu_seqlens_q": torch.tensor([0, 3], dtype=torch.int32)}, {}, "cu_seqlens_q has shape"),
        ({"seq_lens": torch.tensor([2.0, 5.0])}, {}, "seq_lens has dtype"),
        ({"block_tables": torch.zeros(3, 3, dtype=torch.int32)}, {}, "block_tables has shape"),
        ({"block_tables": torch.zeros(2, 3)}, {}, "block_tables has dtype"),
        ({}, {"sliding_window": 0}, "sliding_window"),
        ({}, {"num_splits": 0}, "num_splits"),
        ({}, {"block_n": 24}, "block_n"),
    ],
)
def test_paged_attention_rejects_bad_arguments(change, kwargs, match):
    args = _valid_args()
    args.update(change)
    args = {name: t.to(DEVICE) for name, t in args.items()}
    with pytest.raises(KernelError, match=match):
        triton_ops.paged_attention(*args.values(), 0.25, **kwargs)


def test_paged_attention_valid_args_run():
    """The argument set the error cases start from is itself accepted."""
    args = {name: t.to(DEVICE) for name, t in _valid_args().items()}
    assert triton_ops.paged_attention(*args.values(), 0.25).shape == (3, 4, 16)
