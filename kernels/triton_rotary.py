"""Rotary position embedding applied to q and k in place, as one Triton kernel.

One program rotates every head of one token, queries and keys both. Each head's
first ``R`` features rotate as ``R/2`` pairs ``(x1, x2)``:

    neox (half-split, HF ``rotate_half``): x1 = t[i],    x2 = t[i + R/2]
    gpt-j (interleaved):                   x1 = t[2i],   x2 = t[2i + 1]
    x1' = x1·cos - x2·sin,   x2' = x2·cos + x1·sin

with ``cos = cache[pos, i]`` and ``sin = cache[pos, R/2 + i]``. Frequency
scaling (llama3, linear, ...) lives entirely in how the cache is built.

Memory traffic per token, ``e`` bytes per element: read and write
``(Hq + Hk)·R·e`` bytes of q/k, read ``R·4`` bytes of cache and 8 of position.
"""

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor


@triton.jit
def _rotate_heads(
    t_ptr,  # [T, H, D] base of q or k (already offset to this token)
    stride_h,  # elements between heads
    num_heads,  # H
    cos,  # [1, BLOCK_R2] float32 cosines for this token
    sin,  # [1, BLOCK_R2] float32 sines for this token
    pair_mask,  # [1, BLOCK_R2] valid pair columns
    IS_NEOX: tl.constexpr,
    HALF_R: tl.constexpr,  # R / 2
    BLOCK_H: tl.constexpr,  # power of two >= H (heads done per iteration)
    BLOCK_R2: tl.constexpr,  # power of two >= R / 2
):
    pairs = tl.arange(0, BLOCK_R2)[None, :]  # [1, BLOCK_R2]
    if IS_NEOX:
        off1 = pairs
        off2 = pairs + HALF_R
    else:
        off1 = pairs * 2
        off2 = pairs * 2 + 1
    for h0 in range(0, num_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
        mask = (heads < num_heads) & pair_mask  # [BLOCK_H, BLOCK_R2]
        base = t_ptr + heads * stride_h
        x1 = tl.load(base + off1, mask=mask, other=0.0)
        x2 = tl.load(base + off2, mask=mask, other=0.0)
        x1f = x1.to(tl.float32)
        x2f = x2.to(tl.float32)
        tl.store(base + off1, (x1f * cos - x2f * sin).to(x1.dtype), mask=mask)
        tl.store(base + off2, (x2f * cos + x1f * sin).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr,  # [T] int32/int64 absolute positions
    q_ptr,  # [T, Hq, D] queries, rotated in place
    k_ptr,  # [T, Hk, D] keys, rotated in place
    cache_ptr,  # [max_pos, R] float32: cos in columns [0, R/2), sin in [R/2, R)
    stride_qt,  # elements between tokens of q
    stride_qh,  # elements between heads of q
    stride_kt,  # elements between tokens of k
    stride_kh,  # elements between heads of k
    stride_cache,  # elements between rows of the cache
    num_q_heads,  # Hq
    num_k_heads,  # Hk
    max_pos,  # rows in the cache; out-of-range positions leave the token unrotated
    IS_NEOX: tl.constexpr,  # half-split (True) or interleaved (False) pairs
    HALF_R: tl.constexpr,  # R / 2
    BLOCK_H: tl.constexpr,  # heads per iteration
    BLOCK_R2: tl.constexpr,  # power of two >= R / 2
):
    tok = tl.program_id(0).to(tl.int64)
    pairs = tl.arange(0, BLOCK_R2)[None, :]  # [1, BLOCK_R2]
    pos = tl.load(positions_ptr + tok).to(tl.int64) + tl.zeros([1, BLOCK_R2], tl.int64)  # [1, BLOCK_R2]
    in_range = (pos >= 0) & (pos < max_pos)
    pos = tl.where(in_range, pos, 0)  # never read outside the cache
    pair_mask = (pairs < HALF_R) & in_range
    cos = tl.load(cache_ptr + pos * stride_cache + pairs, mask=pair_mask, other=1.0)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF_R + pairs, mask=pair_mask, other=0.0)
    q_tok = q_ptr + tok * stride_qt
    k_tok = k_ptr + tok * stride_kt
    _rotate_heads(q_tok, stride_qh, num_q_heads, cos, sin, pair_mask, IS_NEOX, HALF_R, BLOCK_H, BLOCK_R2)
    _rotate_heads(k_tok, stride_kh, num_k_heads, cos, sin, pair_mask, IS_NEOX, HALF_R, BLOCK_H, BLOCK_R2)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """Rotate q and k in place by their positions (Triton).

    Args:
        positions: [T] int32/int64 absolute positions. A position outside
            ``[0, max_pos)`` leaves its token unrotated (the kernel never reads
            outside the cache; checking on the host would need a device sync).
        q: [T, Hq, D] queries (any token/head strides, unit last stride).
        k: [T, Hk, D] keys, same dtype as q.
        cos_sin_cache: [max_pos, R] float32, cos | sin halves, ``R <= D``, R even.
        is_neox: half-split (True) or interleaved GPT-J (False) layout.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides.
    """
    op = "rotary_embedding"
    check_tensor(op, "positions", positions, ndim=1, dtypes=INDEX_DTYPES, unit_last_stride=False)
    tokens = positions.shape[0]
    check_tensor(op, "q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor(op, "k", k, shape=(tokens, None, q.shape[2]), dtypes=(q.dtype,))
    check_tensor(op, "q", q, shape=(tokens, None, None))
    check_tensor(op, "cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,))
    check_same_device(op, positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)
    rot = cos_sin_cache.shape[1]
    if rot == 0 or rot % 2 or rot > q.shape[2]:
        raise KernelError(f"{op}: rotary dim R={rot} must be even, positive and <= head_dim {q.shape[2]}")
    if tokens == 0:
        return
    heads = max(q.shape[1], k.shape[1])
    block_r2 = triton.next_power_of_2(rot // 2)
    block_h = min(triton.next_power_of_2(heads), max(1, 4096 // block_r2))
    _rotary_kernel[(tokens,)](
        positions,
        q,
        k,
        cos_sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_sin_cache.stride(0),
        q.shape[1],
        k.shape[1],
        cos_sin_cache.shape[0],
        IS_NEOX=bool(is_neox),
        HALF_R=rot // 2,
        BLOCK_H=block_h,
        BLOCK_R2=block_r2,
        num_warps=4,
    )
