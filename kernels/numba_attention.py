"""Paged attention (decode, prefill, chunked prefill, GQA, sliding window) as a Numba CPU kernel.

Same semantics as ``torch_ops.paged_attention``: sequence ``b`` owns query rows
``cu_seqlens_q[b]:cu_seqlens_q[b+1]``, the *last* ``q_len`` tokens of its
``seq_lens[b]``-token context, whose keys and values are already in the cache;
the query at absolute position ``p`` sees keys ``j <= p`` (and ``j > p - window``).

Work split: one work item per (sequence, KV head, query tile). A tile packs up
to ``max(1, TILE_ROWS // G)`` consecutive query tokens times the ``G = Hq / Hk``
query heads that share the KV head into rows, so every key and value read from
the cache serves all of them; a decode step is one token, ``G`` rows. Items run
in parallel (``prange``).

Keys are read in place through the block table (no gather copy), only inside
the tile's visible range ``[lo of its first query, hi of its last)``: slots
outside it (unwritten, NaN, or in released sliding-window blocks, table entry
-1) are never read. Softmax is online over chunks of ``CHUNK`` keys on a grid
of absolute key positions. Per chunk: the flat cache offset of each key row
(one block-table lookup per block run, shared by every row); the scores of
every row, 16 keys per :func:`~numba_attention_simd.score_group` call (the 16
dot products in registers, reduced together); the chunk max, one rescale of the
row's running sum and accumulator, ``exp`` (vectorized, see
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

Memory traffic: every K/V element in a tile's range is read once per (query
tile, KV head) — for decode exactly once per sequence, ``2·ctx·Hk·D·4`` bytes —
plus q and out once. A decode step reads 512 bytes of K and V per key for G = 3
(query row, key) pairs, from blocks in random places: on the machine of
docs/kernels.md (AVX-512 EPYC, 1 thread) such reads stream at ~10 GB/s (28 GB/s
in order), ~17 ns per pair, so a model's decode (each layer's cache long gone
from L3) is memory-bound. ``benches/attention_kernel.py``, SmolLM2 (9 / 3 heads,
head_dim 64, block 16), 64 sequences of 130 keys, ns per (row, key) pair, the
former kernel (a dot product and a horizontal sum per row and key, a branch and
an axpy per row and key) → this one, same run: keys in L2/L3 13.7 → 8.9 at 1
thread, 8.8 → 5.1 at 2; keys from memory (30 layers' caches cycled) 35.2 → 28.6
at 1 thread, 18.2 → 14.6 at 2; 4-token tiles from memory 20.6 → 11.7 (1 thread).
One sequence of 512 keys in L2: 5.5 ns per pair (scores 2.5, softmax 1.0,
values 1.6, the rest 0.4).

Float32 only (other dtypes fall back to ``torch_ops.paged_attention``).
Sequences with at least ``TORCH_PREFILL_MIN_Q`` query tokens go to the torch op
(SDPA), one sub-batch per call: the former kernel cost ~12 ns per (query row,
key) pair on the machine of docs/kernels.md, SDPA ~6 ns plus ~100 µs per call,
so SDPA won from 4-16 query tokens on (the routing depends only on the
sequence's own query count: still batch invariant; not re-measured for this
kernel, ~6-11 ns per pair in 4-token tiles).
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_attention_simd import (
    GROUP,
    PAD,
    score_group,
    value_rows_1,
    value_rows_2,
    value_rows_3,
    value_rows_4,
)
from rusteeze.kernels.numba_checks import JIT, check_cpu, exp_parts, index_array, is_f32
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_tensor

CHUNK = 64  # keys per online-softmax step (absolute grid: chunk c covers keys [64c, 64c + 64))
TILE_ROWS = 32  # query rows (tokens × GQA heads) per prefill work item
TORCH_PREFILL_MIN_Q = 8  # sequences with this many query tokens or more use the torch op (measured)
PARALLEL_MIN_ROWS = 4  # from this many query rows (tokens) the work items spread over threads

_OK = 0
_BAD_BLOCK = 1


@numba.njit(**JIT)
def _attend_tile(q, k_cache, v_cache, table, ctx, row0, q_len, i0, nq, g, scale, window, out):
    """Attention of query tokens ``i0 .. i0+nq`` of one sequence, the G heads of KV head ``g``.

    q: [T, Hq, D]; k_cache/v_cache: [N, S, Hk, D]; table: [max_blocks] int32, this
    sequence's row of the block table; ctx: context length; row0: the sequence's
    first query row; q_len: its query count; scale: softmax scale; window: sliding
    window or 0; out: [T, Hq, D], rows written. Returns _OK or _BAD_BLOCK.
    """
    num_blocks, block_size, kv_heads = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    head_dim = q.shape[2]
    group = q.shape[1] // kv_heads
    rows = nq * group
    width = -(-head_dim // PAD) * PAD
    qs = np.zeros((rows, width), np.float32)  # scaled queries, zero past head_dim
    acc = np.zeros((rows, width), np.float32)
    s = np.empty((rows, CHUNK + GROUP), np.float32)  # scores, then probabilities (GROUP: score_group's overrun)
    koff = np.empty(CHUNK, np.int64)  # flat offset of each key row of the chunk in k_cache / v_cache
    m = np.full(rows, -np.inf, np.float32)
    l_sum = np.zeros(rows, np.float32)
    lo = np.empty(rows, np.int64)
    hi = np.empty(rows, np.int64)
    pbuf = np.empty(CHUNK, np.float32)
    ebuf = np.empty(CHUNK, np.int32)
    fbuf = ebuf.view(np.float32)
    sc = np.float32(scale)
    for iq in range(nq):
        pos = ctx - q_len + i0 + iq  # absolute position of this query token
        first = max(pos - window + 1, 0) if window > 0 else 0
        for h in range(group):
            r = iq * group + h
            lo[r] = first
            hi[r] = pos + 1
            qrow = q[row0 + i0 + iq, g * group + h]
            for d in range(head_dim):
                qs[r, d] = qrow[d] * sc
    k_lo = lo[0]  # the first query sees the earliest keys, the last one the latest
    k_hi = hi[rows - 1]
    c = (k_lo // CHUNK) * CHUNK
    while c < k_hi:
        c_end = min(c + CHUNK, k_hi)
        j_start = max(c, k_lo)
        # the chunk's key rows [j_start, c_end): one block-table lookup per block run, shared by every row
        if not _chunk_rows(table, num_blocks, block_size, kv_heads, g, head_dim, c, j_start, c_end, koff):
            return _BAD_BLOCK
        # scores of every row against all of them, GROUP keys at a time
        for r in range(rows):
            for col in range(j_start - c, c_end - c, GROUP):
                score_group(qs, r, k_cache, koff, col, min(GROUP, c_end - c - col), s)
        # online softmax: each row over its own visible part of the chunk
        for r in range(rows):
            a = max(lo[r], j_start) - c
            e = min(hi[r], c_end) - c
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
        for iq in range(nq):
            r = iq * group
            a = max(lo[r], j_start) - c
            e = min(hi[r], c_end) - c
            if a < e:
                _value_rows(acc, r, group, s, v_cache, koff, a, e)
        c += CHUNK
    for iq in range(nq):
        for h in range(group):
            r = iq * group + h
            inv = np.float32(1.0) / l_sum[r] if l_sum[r] > 0 else np.float32(0.0)
            orow = out[row0 + i0 + iq, g * group + h]
            for d in range(head_dim):
                orow[d] = acc[r, d] * inv
    return _OK


@numba.njit(inline="always", **JIT)
def _chunk_rows(table, num_blocks, block_size, kv_heads, g, head_dim, c, j_start, c_end, koff):
    """koff[j - c] = the flat cache offset of key j's head-g row, j in [j_start, c_end); False on a bad block."""
    j = j_start
    while j < c_end:
        lb = j // block_size
        blk = table[lb]
        if blk < 0 or blk >= num_blocks:
            return False
        run_end = min(c_end, (lb + 1) * block_size)
        base = ((blk * block_size + j - lb * block_size) * kv_heads + g) * head_dim
        for jj in range(j, run_end):
            koff[jj - c] = base + (jj - j) * kv_heads * head_dim
        j = run_end
    return True


@numba.njit(inline="always", **JIT)
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


@numba.njit(**JIT)
def _work_items(q, k_cache, cu, seq_lens, tables, torch_min_q):
    """The (sequence, KV head, first query token) work items, and the sequences left to torch.

    Sequences with ``torch_min_q`` or more query tokens are left out (for the torch op).
    Returns (items [count, 3], skipped >= 0), or (empty, ``-1 - b``) when sequence b's
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
            return np.empty((0, 3), np.int64), -1 - b
        if end > start and (end - start > ctx or (ctx + block_size - 1) // block_size > tables.shape[1]):
            return np.empty((0, 3), np.int64), -1 - b
        if end - start >= torch_min_q:
            skipped += 1
        else:
            count += kv_heads * ((end - start + tile_q - 1) // tile_q)
    items = np.empty((count, 3), np.int64)
    n = 0
    for b in range(batch):
        q_len = cu[b + 1] - cu[b]
        if q_len >= torch_min_q:
            continue
        for i0 in range(0, q_len, tile_q):
            for g in range(kv_heads):
                items[n, 0] = b
                items[n, 1] = g
                items[n, 2] = i0
                n += 1
    return items, skipped


@numba.njit(**JIT)
def _attend_item(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, out, items, w):
    b, g, i0 = items[w, 0], items[w, 1], items[w, 2]
    q_len = cu[b + 1] - cu[b]
    nq = min(max(1, TILE_ROWS // (q.shape[1] // k_cache.shape[2])), q_len - i0)
    return _attend_tile(q, k_cache, v_cache, tables[b], seq_lens[b], cu[b], q_len, i0, nq, g, scale, window, out)


# Two drivers over the same work items: in the calling thread (small batches, where
# waking threads costs more than it saves) or spread over Numba's threads. Each item
# runs the same code either way, so the results are bit-identical.
# Both return the number of sequences left to torch (>= 0); ``-1 - b`` when sequence b's
# offsets, length or table width are inconsistent (nothing computed); or
# ``_BAD_BLOCK_STATUS`` when a visible key's block-table entry is outside the cache.
@numba.njit(**JIT)
def _attention_serial(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, torch_min_q, out):
    items, skipped = _work_items(q, k_cache, cu, seq_lens, tables, torch_min_q)
    if skipped < 0:
        return skipped
    for w in range(items.shape[0]):
        if _attend_item(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, out, items, w) != _OK:
            return _BAD_BLOCK_STATUS
    return skipped


@numba.njit(parallel=True, **JIT)
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
