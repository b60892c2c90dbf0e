"""Paged attention (decode, prefill, chunked prefill, GQA, sliding window) as a Numba CPU kernel.

Same semantics as ``torch_ops.paged_attention``: sequence ``b`` owns query rows
``cu_seqlens_q[b]:cu_seqlens_q[b+1]``, the *last* ``q_len`` tokens of its
``seq_lens[b]``-token context, whose keys and values are already in the cache;
the query at absolute position ``p`` sees keys ``j <= p`` (and ``j > p - window``).

Work split: one work item per (sequence, query tile), every KV head. A tile
packs up to ``max(1, TILE_ROWS // G)`` consecutive query tokens times the
``G = Hq / Hk`` query heads that share a KV head into that head's rows, so every
key and value read from the cache serves all of them; a decode step is one
token, ``Hq`` rows. Items run in parallel (``prange``).

Keys are read in place through the block table (no gather copy), only inside
the tile's visible range ``[lo of its first query, hi of its last)``: slots
outside it (unwritten, NaN, or in released sliding-window blocks, table entry
-1) are never read. Softmax is online over chunks of ``CHUNK`` keys on a grid
of absolute key positions. Per chunk: a prefetch of the next chunk's blocks
(every head's K and V rows: contiguous runs of ``Hk·D`` floats per key),
spread over the score rows, a share after each (one burst stalled on the
core's miss buffers: 5-11 % slower); an item also prefetches the next item's
first chunk; the flat cache offset of
each key row and KV head (one block-table lookup per block run, shared by
every row); the scores of every row, KV head by KV head, 16 keys per
:func:`~numba_attention_simd.score_group` call (the 16 dot products in
registers, reduced together); the chunk max, one rescale of the row's
running sum and accumulator, ``exp`` (vectorized, see
``numba_checks.exp_parts``); and the values, a query token's G rows at a time
(:func:`~numba_attention_simd.value_rows_3` etc.: their accumulators in
registers over the token's visible keys, no per-key branch).

Batch invariance: a row's result depends only on its own query, its visible
key range and the fixed chunk grid — not on the tile it shares, the batch, or
the thread count. A decode step of position ``p`` computes exactly what the
prefill row of position ``p`` computes: a tile's keys start at its first row's
window, so one key may sit in another slot of a 16-key group in the decode
than in the prefill tile, and ``score_group`` sums every slot in the same order
(see :mod:`numba_attention_simd`); a row's values are added key by key in key
order, whichever rows share the pass.

Memory traffic: every K/V element in a tile's range is read once per query
tile — for decode exactly once per sequence, ``2·ctx·Hk·D·4`` bytes — plus q
and out once. A decode step reads 512 bytes of K and V per key and KV head for
G = 3 (query row, key) pairs, from blocks in random places: on the machine of
docs/kernels.md (AVX-512 EPYC, 1 thread) one head's rows per item streamed at
~10 GB/s (28 GB/s in order), so a model's decode (each layer's cache long gone
from L3) is memory-bound. Reading every head of a block in one item and
prefetching a chunk ahead: keys from memory, 64 sequences, ns per pair, the
per-KV-head items of bd19833 → this, same run, 1 thread: 28.6 → 22.6 (ctx 130),
27.0 → 21.7 (ctx 256); 2 threads 14.9 → 12.6 (ctx 256); without the prefetch
the per-sequence items alone gained 2-5 %; prefetching 2 or 3 chunks ahead
was no better than 1. Before (one item per KV head):
``benches/attention_kernel.py``, SmolLM2 (9 / 3 heads,
head_dim 64, block 16), 64 sequences of 130 keys, ns per (row, key) pair, the
former kernel (a dot product and a horizontal sum per row and key, a branch and
an axpy per row and key) → this one, same run: keys in L2/L3 13.7 → 8.9 at 1
thread, 8.8 → 5.1 at 2; keys from memory (30 layers' caches cycled) 35.2 → 28.6
at 1 thread, 18.2 → 14.6 at 2; 4-token tiles from memory 20.6 → 11.7 (1 thread).
One sequence of 512 keys in L2: 5.5 ns per pair (scores 2.5, softmax 1.0,
values 1.6, the rest 0.4).

Float32 only (other dtypes fall back to ``torch_ops.paged_attention``).
Sequences with at least ``TORCH_PREFILL_MIN_Q`` query tokens go to the torch op
(SDPA, one call per sequence, ~100 µs each; the routing depends only on the
sequence's own query count: still batch invariant). Prefill tiles reuse each
K/V read across 30 rows, ~6.5 ns per (row, key) pair from 128 tokens on, and
beat SDPA up to ~1024 tokens. Same run, 1 thread, 9 / 3 heads, fresh prompts,
µs per sequence, this kernel vs the torch op with its step plan cached: 64 × 8
tokens 22 vs 141, 64 × 32 85 vs 181, 64 × 128 485 vs 659 (805 through the
former routing, whose sub-batch missed the step plan), 1 × 512 6.6 vs 8.3 ms,
1 × 1024 25.4 vs 26.5 ms, 1 × 2048 96 vs 83 ms. A sequence's tiles are listed
first, last, second, second to last, ... so the two threads' halves of the
items cost about the same (one 512-token prompt at 2 threads: 22.8 → 15.6 ms).
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_attention_simd import (
    GROUP,
    PAD,
    prefetch,
    score_group,
    value_rows_1,
    value_rows_2,
    value_rows_3,
    value_rows_4,
)
from rusteeze.kernels.numba_checks import FASTMATH, JIT, check_cpu, exp_parts, index_array, is_f32
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_tensor

# Compiled without reassociation, like the weight tiles (numba_pair_dot.TILE_JIT): with it a fresh compile and
# a load from Numba's cache grouped some float32 sums differently (838 of 7488 outputs 1 ulp apart in a test
# batch), so a greedy near-tie could go one way on the first run after an install and the other way later.
# Without it both agree bit for bit; the cost, benches/attention_kernel.py against the reassociating build, same
# run: decode from memory 0.97-0.98x on 1 thread (at 2 threads within noise), 16-token tiles 0.91-0.94x.
_ATTN_JIT = {**JIT, "fastmath": FASTMATH - {"reassoc"}}
CHUNK = 64  # keys per online-softmax step (absolute grid: chunk c covers keys [64c, 64c + 64))
PREFETCH_CHUNKS = 1  # chunks of keys prefetched ahead of the one computed
TILE_ROWS = 32  # query rows (tokens × GQA heads) per prefill work item
TORCH_PREFILL_MIN_Q = 1024  # sequences with this many query tokens or more use the torch op (measured)
PARALLEL_MIN_ROWS = 4  # from this many query rows (tokens) the work items spread over threads

_OK = 0
_BAD_BLOCK = 1


@numba.njit(**_ATTN_JIT)
def _attend_tile(q, k_cache, v_cache, table, ctx, row0, q_len, i0, nq, scale, window, out):
    """Attention of query tokens ``i0 .. i0+nq`` of one sequence, every query head.

    q: [T, Hq, D]; k_cache/v_cache: [N, S, Hk, D]; table: [max_blocks] int32, this
    sequence's row of the block table; ctx: context length; row0: the sequence's
    first query row; q_len: its query count; scale: softmax scale; window: sliding
    window or 0; out: [T, Hq, D], rows written. Returns _OK or _BAD_BLOCK.

    Rows: KV head g's rows are ``g·R .. g·R + R`` (R = nq·G), token iq's G heads
    at ``g·R + iq·G + h``. Per chunk every KV head's scores, then its softmax, then
    its values: the chunk's blocks are read whole (all heads' K rows, then V).
    """
    num_blocks, block_size, kv_heads = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    head_dim = q.shape[2]
    group = q.shape[1] // kv_heads
    rows = nq * group  # rows per KV head
    width = -(-head_dim // PAD) * PAD
    qs = np.zeros((kv_heads * rows, width), np.float32)  # scaled queries, zero past head_dim
    acc = np.zeros((kv_heads * rows, width), np.float32)
    s = np.empty((kv_heads * rows, CHUNK + GROUP), np.float32)  # scores, then probabilities (GROUP: overrun)
    koff = np.empty((kv_heads, CHUNK), np.int64)  # flat offset of each key row of the chunk, per KV head
    m = np.full(kv_heads * rows, -np.inf, np.float32)
    l_sum = np.zeros(kv_heads * rows, np.float32)
    lo = np.empty(rows, np.int64)  # visible keys [lo, hi) of row r (the same for every KV head)
    hi = np.empty(rows, np.int64)
    pbuf = np.empty(CHUNK, np.float32)
    ebuf = np.empty(CHUNK, np.int32)
    fbuf = ebuf.view(np.float32)
    sc = np.float32(scale)
    for iq in range(nq):
        pos = ctx - q_len + i0 + iq  # absolute position of this query token
        first = max(pos - window + 1, 0) if window > 0 else 0
        for h in range(group):
            lo[iq * group + h] = first
            hi[iq * group + h] = pos + 1
        for hq in range(q.shape[1]):
            qrow = q[row0 + i0 + iq, hq]
            r = (hq // group) * rows + iq * group + hq % group
            for d in range(head_dim):
                qs[r, d] = qrow[d] * sc
    k_lo = lo[0]  # the first query sees the earliest keys, the last one the latest
    k_hi = hi[rows - 1]
    c = (k_lo // CHUNK) * CHUNK
    while c < k_hi:
        c_end = min(c + CHUNK, k_hi)
        j_start = max(c, k_lo)
        ahead = c + PREFETCH_CHUNKS * CHUNK  # the chunk PREFETCH_CHUNKS on (the first ones: see _attend_item)
        n_ahead = max(0, min(ahead + CHUNK, k_hi) - ahead)
        units = kv_heads * rows
        # the chunk's key rows [j_start, c_end): one block-table lookup per block run, shared by every row
        if not _chunk_rows(table, num_blocks, block_size, kv_heads, head_dim, c, j_start, c_end, koff):
            return _BAD_BLOCK
        # scores of every row against all of them, GROUP keys at a time, KV head by KV head
        for g in range(kv_heads):
            kg = koff[g]
            for r in range(g * rows, (g + 1) * rows):
                for col in range(j_start - c, c_end - c, GROUP):
                    score_group(qs, r, k_cache, kg, col, min(GROUP, c_end - c - col), s)
                p0 = ahead + r * n_ahead // units  # row r's share of the prefetch
                _prefetch_keys(table, num_blocks, k_cache, v_cache, p0, ahead + (r + 1) * n_ahead // units)
        # online softmax: each row over its own visible part of the chunk
        for r in range(kv_heads * rows):
            a = max(lo[r % rows], j_start) - c
            e = min(hi[r % rows], c_end) - c
            if a >= e:
                continue
            mc = s[r, a]
            for k in range(a + 1, e):
                mc = max(mc, s[r, k])
            if mc > m[r]:
                alpha = np.exp(m[r] - mc)  # exactly 0 on the first chunk (m = -inf)
                l_sum[r] *= alpha
                for d in range(head_dim):
                    acc[r, d] *= alpha
                m[r] = mc
            mr = m[r]
            part = s[r, a:e]  # a row slice: with it (not s[r, k]) LLVM vectorizes the exp loop (-25%)
            for k in range(e - a):
                p, bits = exp_parts(part[k] - mr)
                pbuf[k] = p
                ebuf[k] = bits
            total = np.float32(0.0)
            for k in range(e - a):
                p = pbuf[k] * fbuf[k]
                part[k] = p
                total += p
            l_sum[r] += total
        # values weighted by the probabilities now in s: a token's G rows share its visible range
        for g in range(kv_heads):
            kg = koff[g]
            for iq in range(nq):
                r = iq * group
                a = max(lo[r], j_start) - c
                e = min(hi[r], c_end) - c
                if a < e:
                    _value_rows(acc, g * rows + r, group, s, v_cache, kg, a, e)
        c += CHUNK
    for iq in range(nq):
        for hq in range(q.shape[1]):
            r = (hq // group) * rows + iq * group + hq % group
            inv = np.float32(1.0) / l_sum[r] if l_sum[r] > 0 else np.float32(0.0)
            orow = out[row0 + i0 + iq, hq]
            for d in range(head_dim):
                orow[d] = acc[r, d] * inv
    return _OK


@numba.njit(inline="always", **_ATTN_JIT)
def _chunk_rows(table, num_blocks, block_size, kv_heads, head_dim, c, j_start, c_end, koff):
    """koff[g, j - c] = the flat cache offset of key j's head-g row, j in [j_start, c_end); False on a bad block."""
    j = j_start
    while j < c_end:
        lb = j // block_size
        blk = table[lb]
        if blk < 0 or blk >= num_blocks:
            return False
        run_end = min(c_end, (lb + 1) * block_size)
        base = (blk * block_size + j - lb * block_size) * kv_heads * head_dim
        for g in range(kv_heads):
            for jj in range(j, run_end):
                koff[g, jj - c] = base + ((jj - j) * kv_heads + g) * head_dim
        j = run_end
    return True


@numba.njit(inline="always", **_ATTN_JIT)
def _prefetch_keys(table, num_blocks, k_cache, v_cache, j0, j1):
    """Prefetch every KV head's K and V rows of keys [j0, j1) into L2 (contiguous runs; bad blocks skipped)."""
    block_size = k_cache.shape[1]
    key_floats = k_cache.shape[2] * k_cache.shape[3]
    j = j0
    while j < j1:
        lb = j // block_size
        blk = table[lb]
        run_end = min(j1, (lb + 1) * block_size)
        if 0 <= blk < num_blocks:
            off = (blk * block_size + j - lb * block_size) * key_floats
            prefetch(k_cache, off, (run_end - j) * key_floats)
            prefetch(v_cache, off, (run_end - j) * key_floats)
        j = run_end


@numba.njit(inline="always", **_ATTN_JIT)
def _value_rows(acc, r0, count, s, v_cache, koff, a, e):
    """acc[r0 + i] += Σ_{a <= k < e} s[r0 + i, k] · V(koff[k]) for i < count, up to 4 rows per pass."""
    r = r0
    while r < r0 + count:
        left = r0 + count - r
        if left >= 4:
            value_rows_4(acc, r, s, v_cache, koff, a, e)
            r += 4
        elif left == 3:
            value_rows_3(acc, r, s, v_cache, koff, a, e)
            r += 3
        elif left == 2:
            value_rows_2(acc, r, s, v_cache, koff, a, e)
            r += 2
        else:
            value_rows_1(acc, r, s, v_cache, koff, a, e)
            r += 1


_BAD_BLOCK_STATUS = -(1 << 62)


@numba.njit(**_ATTN_JIT)
def _work_items(q, k_cache, cu, seq_lens, tables, torch_min_q):
    """The (sequence, first query token) work items, and the sequences left to torch.

    Sequences with ``torch_min_q`` or more query tokens are left out (for the torch op).
    Returns (items [count, 2], skipped >= 0), or (empty, ``-1 - b``) when sequence b's
    offsets, length or table width are inconsistent.
    """
    batch = seq_lens.shape[0]
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    tile_q = max(1, TILE_ROWS // (q.shape[1] // kv_heads))
    count = 0
    skipped = 0
    for b in range(batch):
        start, end, ctx = cu[b], cu[b + 1], seq_lens[b]
        if start < 0 or end < start or end > q.shape[0]:
            return np.empty((0, 2), np.int64), -1 - b
        if end > start and (end - start > ctx or (ctx + block_size - 1) // block_size > tables.shape[1]):
            return np.empty((0, 2), np.int64), -1 - b
        if end - start >= torch_min_q:
            skipped += 1
        else:
            count += (end - start + tile_q - 1) // tile_q
    items = np.empty((count, 2), np.int64)
    n = 0
    for b in range(batch):
        q_len = cu[b + 1] - cu[b]
        if q_len >= torch_min_q:
            continue
        tiles = (q_len + tile_q - 1) // tile_q
        for k in range(tiles):  # tiles 0, last, 1, last - 1, ...: any half of the list costs about half
            items[n, 0] = b
            items[n, 1] = (k // 2 if k % 2 == 0 else tiles - 1 - k // 2) * tile_q
            n += 1
    return items, skipped


@numba.njit(inline="always", **_ATTN_JIT)
def _prefetch_start(k_cache, v_cache, cu, seq_lens, tables, window, items, w):
    """Prefetch the keys of item w's first PREFETCH_CHUNKS chunks (its first query token's visible ones)."""
    b, i0 = items[w, 0], items[w, 1]
    pos = seq_lens[b] - (cu[b + 1] - cu[b]) + i0
    first = max(pos - window + 1, 0) if window > 0 else 0
    end = min((first // CHUNK + PREFETCH_CHUNKS) * CHUNK, pos + 1)
    _prefetch_keys(tables[b], k_cache.shape[0], k_cache, v_cache, first, end)


@numba.njit(**_ATTN_JIT)
def _attend_item(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, out, items, w):
    if w == 0:
        _prefetch_start(k_cache, v_cache, cu, seq_lens, tables, window, items, w)
    if w + 1 < items.shape[0]:  # the next item (the same thread's next, mostly): its first chunks on their way
        _prefetch_start(k_cache, v_cache, cu, seq_lens, tables, window, items, w + 1)
    b, i0 = items[w, 0], items[w, 1]
    q_len = cu[b + 1] - cu[b]
    nq = min(max(1, TILE_ROWS // (q.shape[1] // k_cache.shape[2])), q_len - i0)
    return _attend_tile(q, k_cache, v_cache, tables[b], seq_lens[b], cu[b], q_len, i0, nq, scale, window, out)


# Two drivers over the same work items: in the calling thread (small batches, where
# waking threads costs more than it saves) or spread over Numba's threads. Each item
# runs the same code either way, so the results are bit-identical.
# Both return the number of sequences left to torch (>= 0); ``-1 - b`` when sequence b's
# offsets, length or table width are inconsistent (nothing computed); or
# ``_BAD_BLOCK_STATUS`` when a visible key's block-table entry is outside the cache.
@numba.njit(**_ATTN_JIT)
def _attention_serial(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, torch_min_q, out):
    items, skipped = _work_items(q, k_cache, cu, seq_lens, tables, torch_min_q)
    if skipped < 0:
        return skipped
    for w in range(items.shape[0]):
        if _attend_item(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, out, items, w) != _OK:
            return _BAD_BLOCK_STATUS
    return skipped


@numba.njit(parallel=True, **_ATTN_JIT)
def _attention_parallel(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, torch_min_q, out):
    items, skipped = _work_items(q, k_cache, cu, seq_lens, tables, torch_min_q)
    if skipped < 0:
        return skipped
    status = np.zeros(items.shape[0], np.int64)
    for w in numba.prange(items.shape[0]):
        status[w] = _attend_item(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, out, items, w)
    for w in range(items.shape[0]):
        if status[w] != _OK:
            return _BAD_BLOCK_STATUS
    return skipped


def _check(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, sliding_window) -> None:
    op = "paged_attention"
    check_tensor(op, "q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor(op, "k_cache", k_cache, shape=(None, None, None, q.shape[2]))
    check_tensor(op, "v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,))
    check_tensor(op, "seq_lens", seq_lens, ndim=1, dtypes=(torch.int32, torch.int64), unit_last_stride=False)
    batch = seq_lens.shape[0]
    check_tensor(op, "cu_seqlens_q", cu_seqlens_q, shape=(batch + 1,), dtypes=(torch.int32, torch.int64))
    check_tensor(op, "block_tables", block_tables, shape=(batch, None), dtypes=(torch.int32, torch.int64))
    check_cpu(
        op,
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        cu_seqlens_q=cu_seqlens_q,
        seq_lens=seq_lens,
        block_tables=block_tables,
    )
    if k_cache.shape[2] == 0 or q.shape[1] % k_cache.shape[2]:
        raise KernelError(f"{op}: query heads ({q.shape[1]}) must be a multiple of KV heads ({k_cache.shape[2]})")
    if k_cache.shape[1] == 0:
        raise KernelError(f"{op}: k_cache has block_size 0")
    if sliding_window is not None and sliding_window < 1:
        raise KernelError(f"{op}: sliding_window must be >= 1 or None, got {sliding_window}")


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    torch_prefill_min_q: int | None = None,
) -> torch.Tensor:
    """Causal attention of a flat batch of query tokens over the paged KV cache (Numba).

    Args:
        q: [T, Hq, D] float32 queries (a non-contiguous q is copied).
        k_cache: [num_blocks, block_size, Hk, D] float32, contiguous; read in place.
        v_cache: same shape as k_cache.
        cu_seqlens_q: [B + 1] int32/int64 query offsets.
        seq_lens: [B] int32/int64 context length of each sequence (cached + new).
        block_tables: [B, max_blocks] int32/int64 physical block of each logical
            block; entries outside a sequence's visible range are never read
            (-1 for released sliding-window blocks is fine).
        scale: softmax scale.
        sliding_window: attend to at most this many most recent keys, or None.
        torch_prefill_min_q: sequences with at least this many query tokens run
            through ``torch_ops.paged_attention``; None: :data:`TORCH_PREFILL_MIN_Q`.

    Returns:
        [T, Hq, D] attention output (rows of no sequence are left uninitialized, as in the torch op).

    Raises:
        KernelError: wrong shapes, dtypes or devices, inconsistent offsets or
        lengths, or a block-table entry outside the cache inside a visible range.
        Other dtypes and non-contiguous caches fall back to the torch op.
    """
    op = "paged_attention"
    if not (
        is_f32(q, 3)
        and is_f32(k_cache, 4)
        and is_f32(v_cache, 4)
        and k_cache.shape == v_cache.shape
        and q.shape[2] == k_cache.shape[3]
        and k_cache.shape[2] > 0
        and q.shape[1] % k_cache.shape[2] == 0
        and (sliding_window is None or sliding_window >= 1)
    ):
        _check(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, sliding_window)
        if q.dtype is not torch.float32 or not (is_f32(k_cache, 4) and is_f32(v_cache, 4)):
            return torch_ops.paged_attention(
                q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, scale, sliding_window
            )
        q = q.contiguous()
    cu = index_array(op, "cu_seqlens_q", cu_seqlens_q, torch.int32, 1)
    lens = index_array(op, "seq_lens", seq_lens, torch.int32, 1)
    tables = index_array(op, "block_tables", block_tables, torch.int32, 2)
    if cu.shape[0] != lens.shape[0] + 1 or tables.shape[0] != lens.shape[0]:
        _check(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, sliding_window)
    min_q = TORCH_PREFILL_MIN_Q if torch_prefill_min_q is None else torch_prefill_min_q
    out = torch.empty_like(q)
    qn, kn, vn, on = q.numpy(), k_cache.numpy(), v_cache.numpy(), out.numpy()
    kernel = _attention_parallel if q.shape[0] >= PARALLEL_MIN_ROWS else _attention_serial
    status = kernel(qn, kn, vn, cu, lens, tables, float(scale), int(sliding_window or 0), min_q, on)
    if status > 0:
        _torch_prefill(q, k_cache, v_cache, cu, lens, tables, np.diff(cu) >= min_q, scale, sliding_window, out)
    elif status == _BAD_BLOCK_STATUS:
        raise KernelError(f"{op}: a block-table entry inside a visible key range is outside the cache")
    elif status < 0:
        bad = -1 - status
        raise KernelError(
            f"{op}: sequence {bad} has query rows [{cu[bad]}, {cu[bad + 1]}) of {q.shape[0]}, context {lens[bad]} "
            f"and a block table of {tables.shape[1]} blocks of {k_cache.shape[1]}: inconsistent"
        )
    return out


def _torch_prefill(q, k_cache, v_cache, cu, lens, tables, which, scale, sliding_window, out) -> None:
    """Long prefills through ``torch_ops.paged_attention`` (SDPA), one sub-batch."""
    seqs = np.flatnonzero(which)
    rows = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in seqs])
    sub_cu = np.zeros(len(seqs) + 1, np.int32)
    np.cumsum(cu[seqs + 1] - cu[seqs], out=sub_cu[1:])
    rows_t = torch.from_numpy(rows)
    out[rows_t] = torch_ops.paged_attention(
        q[rows_t],
        k_cache,
        v_cache,
        torch.from_numpy(sub_cu),
        torch.from_numpy(lens[seqs]),
        torch.from_numpy(np.ascontiguousarray(tables[seqs])),
        scale,
        sliding_window,
    )
