"""Unified paged attention: decode, prefill and chunked prefill in one Triton kernel.

Sequence ``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``: the *last*
``q_len`` tokens of its ``seq_lens[b]``-token context, whose keys and values
(the new ones included) are already in the paged cache. Query token at absolute
position ``p`` sees keys ``j <= p`` (and ``j > p - window`` with a sliding window).
Decode is simply ``q_len == 1``; a prefix-cache hit or an earlier chunk is
context already in the cache.

Work split (one program per cell of the grid ``(q_tiles, Hk, NUM_SPLITS)``):

* A *query tile* packs ``BLOCK_Q`` consecutive query tokens of one sequence times
  the ``G = Hq / Hk`` query heads that share one KV head (GQA) into
  ``BLOCK_M = BLOCK_Q · G`` rows, so every K/V tile loaded from the cache
  serves all of them. Tile ``i`` of sequence ``b`` has grid index
  ``cu_seqlens_q[b] // BLOCK_Q + b + i``; a program finds its sequence by binary
  search over ``cu_seqlens_q`` (no host sync, no per-batch metadata).
* Keys are visited ``BLOCK_N`` at a time, only over the causal (and window)
  range of the tile; each key's physical block comes from the block table, so
  any ``block_size`` works. Softmax is online (running max ``m``, sum ``l``) in
  float32, in the log2 domain (``exp2``).
* Split-K: with ``NUM_SPLITS > 1`` each program takes one contiguous share of
  the tile's key range and writes its un-normalized ``acc``, ``m`` and ``l``
  to a float32 workspace; ``_reduce_splits_kernel`` merges the shares. This
  keeps the GPU busy when a decode batch has few sequences and long contexts.

Memory traffic: every K/V element in a tile's key range is read once per
(query tile, KV head) — for decode exactly once per sequence: ``2·ctx·Hk·D·e``
bytes — plus ``q`` and ``out`` once, plus (split-K) ``T·Hq·S·(D+2)·4`` bytes
of workspace written and read back.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
MAX_SPLITS = 32


@triton.jit
def _find_sequence(
    cu_q_ptr,  # [B + 1] query offsets
    target,  # this program's query-tile index
    num_seqs,  # B
    BLOCK_Q: tl.constexpr,  # query tokens per tile
):
    """Largest b in [0, B) with ``cu_q[b] // BLOCK_Q + b <= target`` (binary search)."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(cu_q_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        if first_tile <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    q_ptr,  # [T, Hq, D] queries
    k_cache_ptr,  # [num_blocks, block_size, Hk, D]
    v_cache_ptr,  # [num_blocks, block_size, Hk, D] (same strides as k_cache)
    out_ptr,  # [T, Hq, D] output (written when NUM_SPLITS == 1)
    part_acc_ptr,  # [T, Hq, NUM_SPLITS, BLOCK_D] float32 un-normalized outputs (NUM_SPLITS > 1)
    part_m_ptr,  # [T, Hq, NUM_SPLITS] float32 running max, log2 domain (NUM_SPLITS > 1)
    part_l_ptr,  # [T, Hq, NUM_SPLITS] float32 softmax denominators (NUM_SPLITS > 1)
    cu_q_ptr,  # [B + 1] int32/int64 query offsets
    seq_lens_ptr,  # [B] int32/int64 context length (cached + new) per sequence
    block_tables_ptr,  # [B, max_blocks] int32/int64 physical block per logical block
    stride_qt,  # q: elements between tokens
    stride_qh,  # q: elements between heads
    stride_ot,  # out: elements between tokens
    stride_oh,  # out: elements between heads
    stride_cb,  # cache: elements between blocks
    stride_cs,  # cache: elements between slots of a block
    stride_ch,  # cache: elements between heads
    stride_bt,  # block_tables: elements between rows
    num_seqs,  # B
    num_q_heads,  # Hq
    num_blocks,  # physical blocks in the cache (bad table entries read nothing)
    max_blocks,  # columns of block_tables
    block_size,  # slots per block
    head_dim,  # D
    qk_scale,  # softmax scale · log2(e)
    window,  # sliding window (keys j > p - window), used when USE_WINDOW
    G: tl.constexpr,  # Hq // Hk query heads per KV head
    BLOCK_Q: tl.constexpr,  # query tokens per tile (BLOCK_M // G)
    BLOCK_M: tl.constexpr,  # rows per tile (>= 16, power of two)
    BLOCK_N: tl.constexpr,  # keys per inner iteration
    BLOCK_D: tl.constexpr,  # power of two >= D
    NUM_SPLITS: tl.constexpr,  # key-range shares per tile (split-K)
    USE_WINDOW: tl.constexpr,  # apply the sliding window
    IEEE: tl.constexpr,  # fp32 inputs: exact fp32 dots instead of tf32
):
    pid_tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_sequence(cu_q_ptr, pid_tile, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_q_ptr + seq).to(tl.int32)
    q_len = tl.load(cu_q_ptr + seq + 1).to(tl.int32) - q_start
    q_tile = pid_tile - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:
        return  # a spare grid cell: this sequence has fewer tiles
    ctx = tl.load(seq_lens_ptr + seq).to(tl.int32)

    rows = tl.arange(0, BLOCK_M)
    q_idx = q_tile * BLOCK_Q + rows // G  # [BLOCK_M] query index within the sequence
    head = kv_head * G + rows % G  # [BLOCK_M] query head
    row_ok = (rows < BLOCK_Q * G) & (q_idx < q_len)
    q_pos = ctx - q_len + q_idx  # [BLOCK_M] absolute position of each row's token
    token = (q_start + q_idx).to(tl.int64)  # [BLOCK_M] row of q / out
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < head_dim

    q = tl.load(
        q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]

    # The causal/window key range of the whole tile, then this split's share.
    first_pos = ctx - q_len + q_tile * BLOCK_Q
    last_pos = ctx - q_len + tl.minimum(q_tile * BLOCK_Q + BLOCK_Q, q_len) - 1
    kv_end = tl.minimum(last_pos + 1, ctx)
    kv_start = 0
    if USE_WINDOW:
        kv_start = tl.maximum(first_pos - window + 1, 0)
    tile_lo = kv_start // BLOCK_N
    tile_hi = tl.maximum(tl.cdiv(kv_end, BLOCK_N), tile_lo)
    per_split = tl.cdiv(tile_hi - tile_lo, NUM_SPLITS)
    my_lo = tile_lo + split * per_split
    my_hi = tl.minimum(my_lo + per_split, tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = kv_head.to(tl.int64) * stride_ch
    for t in range(my_lo, my_hi):
        keys = t * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] absolute key positions
        logical = keys // block_size
        # Keys before kv_start share a BLOCK_N tile with visible ones but no row sees them, and
        # their blocks may be released (table entry -1, or a block someone else owns): read nothing.
        key_ok = (keys >= kv_start) & (keys < kv_end) & (logical < max_blocks)
        phys = tl.load(table_row + logical, mask=key_ok, other=0).to(tl.int64)
        key_ok = key_ok & (phys >= 0) & (phys < num_blocks)
        slot_off = phys * stride_cb + (keys % block_size).to(tl.int64) * stride_cs + head_off  # [BLOCK_N]

        k = tl.load(
            k_cache_ptr + slot_off[None, :] + dims[:, None],
            mask=d_ok[:, None] & key_ok[None, :],
            other=0.0,
        ).to(q.dtype)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k, input_precision="ieee") if IEEE else tl.dot(q, k)
        s = s * qk_scale  # [BLOCK_M, BLOCK_N], log2 domain
        visible = key_ok[None, :] & (keys[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            visible = visible & (keys[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))

        # Online softmax. A row may see no key in this tile (causal or window edge):
        # use 0 as its reference max so exp2(-inf - ref) = 0 instead of NaN.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v = tl.load(
            v_cache_ptr + slot_off[:, None] + dims[None, :],
            mask=key_ok[:, None] & d_ok[None, :],
            other=0.0,  # masked keys must be 0, not garbage: 0 · NaN would poison acc
        ).to(q.dtype)  # [BLOCK_N, BLOCK_D]
        p = p.to(v.dtype)
        pv = tl.dot(p, v, input_precision="ieee") if IEEE else tl.dot(p, v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )
    else:
        part = (token * num_q_heads + head) * NUM_SPLITS + split  # [BLOCK_M]
        tl.store(part_acc_ptr + part[:, None] * BLOCK_D + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_m_ptr + part, m_i, mask=row_ok)
        tl.store(part_l_ptr + part, l_i, mask=row_ok)


@triton.jit
def _reduce_splits_kernel(
    part_acc_ptr,  # [T, Hq, NUM_SPLITS, BLOCK_D] float32 un-normalized outputs
    part_m_ptr,  # [T, Hq, NUM_SPLITS] float32 running max (log2 domain)
    part_l_ptr,  # [T, Hq, NUM_SPLITS] float32 softmax denominators
    out_ptr,  # [T, Hq, D] output
    stride_ot,  # out: elements between tokens
    stride_oh,  # out: elements between heads
    num_q_heads,  # Hq
    head_dim,  # D
    NUM_SPLITS: tl.constexpr,  # shares to merge
    SPLITS_P2: tl.constexpr,  # power of two >= NUM_SPLITS
    BLOCK_D: tl.constexpr,  # power of two >= D
):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_P2)
    s_ok = splits < NUM_SPLITS
    dims = tl.arange(0, BLOCK_D)
    base = (tok * num_q_heads + head) * NUM_SPLITS + splits  # [SPLITS_P2]
    m = tl.load(part_m_ptr + base, mask=s_ok, other=float("-inf"))
    l_part = tl.load(part_l_ptr + base, mask=s_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_ref = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.math.exp2(m - m_ref)  # [SPLITS_P2]; empty shares (m = -inf) weigh 0
    denom = tl.sum(l_part * w, axis=0)
    acc = tl.load(part_acc_ptr + base[:, None] * BLOCK_D + dims[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    out_ptrs = out_ptr + tok * stride_ot + head * stride_oh + dims
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=dims < head_dim)


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _choose_splits(device: torch.device, programs: int, max_key_tiles: int) -> int:
    """Split-K factor: enough programs to fill the GPU, at least 4 key tiles per share."""
    if device.type != "cuda":
        return 1  # the interpreter gains nothing from splitting
    target = 2 * _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    if programs >= target:
        return 1
    return max(1, min(math.ceil(target / programs), max_key_tiles // 4, MAX_SPLITS))


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
    num_splits: int | None = None,
    block_n: int = 32,
) -> torch.Tensor:
    """Causal attention of a flat batch of query tokens over the paged KV cache (Triton).

    Same contract as ``torch_ops.paged_attention``: sequence ``b``'s queries are
    rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of q, the last tokens of its
    ``seq_lens[b]``-token context, all of whose K/V are already in the cache.

    Args:
        q: [T, Hq, D] queries (any token/head strides, unit last stride).
        k_cache: [num_blocks, block_size, Hk, D], Hq a multiple of Hk.
        v_cache: same shape and strides as k_cache.
        cu_seqlens_q: [B + 1] int32/int64 query offsets, contiguous, ending at T.
        seq_lens: [B] int32/int64 context lengths, contiguous, each ``>= q_len``.
        block_tables: [B, max_blocks] int32/int64 physical block per logical block.
        scale: softmax scale (usually ``D ** -0.5``).
        sliding_window: attend to at most this many most recent keys, or None.
        num_splits: split-K factor; None picks one from the batch shape
            (always 1 on CPU). Values above 1 use a float32 workspace.
        block_n: keys per inner iteration (a power of two >= 16).

    Returns:
        [T, Hq, D] attention output in q's dtype.

    Raises:
        KernelError: wrong shapes, dtypes, devices, strides or parameters.
    """
    op = "paged_attention"
    check_tensor(op, "q", q, ndim=3, dtypes=FLOAT_DTYPES)
    tokens, q_heads, head_dim = q.shape
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    check_tensor(op, "k_cache", k_cache, shape=(None, None, None, head_dim))
    check_tensor(op, "v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,))
    if v_cache.stride() != k_cache.stride():
        raise KernelError(f"{op}: v_cache strides {v_cache.stride()} differ from k_cache strides {k_cache.stride()}")
    check_tensor(op, "seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES)
    batch = seq_lens.shape[0]
    check_tensor(op, "cu_seqlens_q", cu_seqlens_q, shape=(batch + 1,), dtypes=INDEX_DTYPES)
    check_tensor(op, "block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES)
    check_tensor(op, "block_tables", block_tables, shape=(batch, None))
    tensors = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_tables": block_tables}
    check_same_device(op, cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, **tensors)
    if kv_heads == 0 or q_heads % kv_heads:
        raise KernelError(f"{op}: query heads ({q_heads}) must be a multiple of KV heads ({kv_heads})")
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise KernelError(f"{op}: head_dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if block_size == 0:
        raise KernelError(f"{op}: k_cache has block_size 0")
    if not math.isfinite(scale):
        raise KernelError(f"{op}: scale must be finite, got {scale}")
    if sliding_window is not None and sliding_window < 1:
        raise KernelError(f"{op}: sliding_window must be >= 1 or None, got {sliding_window}")
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise KernelError(f"{op}: num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if block_n < 16 or block_n & (block_n - 1):
        raise KernelError(f"{op}: block_n must be a power of two >= 16, got {block_n}")

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if tokens == 0 or batch == 0:
        return out

    group = q_heads // kv_heads
    avg_q_len = tokens / batch
    block_m = max(64 if avg_q_len >= 32 else 16, triton.next_power_of_2(group))
    block_q = block_m // group
    q_tiles = tokens // block_q + batch  # upper bound on the sum of cdiv(q_len, BLOCK_Q)
    max_keys = block_tables.shape[1] * block_size
    if sliding_window is not None:
        max_keys = min(max_keys, sliding_window + block_q - 1)
    if num_splits is None:
        num_splits = _choose_splits(q.device, q_tiles * kv_heads, triton.cdiv(max_keys, block_n))
    block_d = max(16, triton.next_power_of_2(head_dim))

    if num_splits > 1:
        part_acc = torch.empty((tokens, q_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
        part_m = torch.empty((tokens, q_heads, num_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused by the kernel

    _paged_attention_kernel[(q_tiles, kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        out,
        part_acc,
        part_m,
        part_l,
        cu_seqlens_q,
        seq_lens,
        block_tables,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        batch,
        q_heads,
        num_blocks,
        block_tables.shape[1],
        block_size,
        head_dim,
        float(scale) * LOG2E,
        int(sliding_window or 0),
        G=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        NUM_SPLITS=num_splits,
        USE_WINDOW=sliding_window is not None,
        IEEE=q.dtype == torch.float32,
        num_warps=4 if block_m <= 16 else 8,
    )
    if num_splits > 1:
        _reduce_splits_kernel[(tokens, q_heads)](
            part_acc,
            part_m,
            part_l,
            out,
            out.stride(0),
            out.stride(1),
            q_heads,
            head_dim,
            NUM_SPLITS=num_splits,
            SPLITS_P2=triton.next_power_of_2(num_splits),
            BLOCK_D=block_d,
            num_warps=4,
        )
    return out
