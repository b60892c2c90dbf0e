"""Rotary embedding of q and k, KV-cache store, and both in one pass, as Numba CPU kernels.

Rotation (per head, the first R features as R/2 pairs; see ``torch_ops.rotary_embedding``)::

    neox (half-split):   x1 = t[i],  x2 = t[i + R/2]      gpt-j: x1 = t[2i], x2 = t[2i + 1]
    x1' = x1·cos - x2·sin,   x2' = x2·cos + x1·sin,   cos = cache[pos, i], sin = cache[pos, R/2 + i]

Memory traffic per token: rotary reads and writes (Hq + Hk)·R·4 bytes of q/k and
reads 4R bytes of the table; the store reads 2·Hk·D·4 bytes and writes as many
into the cache. :func:`rotary_store_kv` does both while the token's k is in L1.

Every index is checked before anything is written: a position outside the
table or a slot past the cache raises KernelError and leaves q, k and the
cache untouched (the torch ops raise IndexError on the same input). Slots < 0
are padding and are skipped.

Float32 only. q/k that are not contiguous, and other dtypes, fall back to the
torch ops (in place on the caller's tensors); non-contiguous key/value of
``store_kv`` are copied first (they are only read).
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_checks import JIT, array, check_cpu, index_array, is_f32
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_tensor


@numba.njit(**JIT)
def _rotate_token(x, cache, pos, neox):
    """Rotate every head of one token in place. x: [H, D]; cache: [max_pos, R]; pos: row of cache."""
    half = cache.shape[1] // 2
    cos = cache[pos, :half]
    sin = cache[pos, half:]
    for h in range(x.shape[0]):
        row = x[h]
        if neox:
            for i in range(half):
                x1 = row[i]
                x2 = row[half + i]
                row[i] = x1 * cos[i] - x2 * sin[i]
                row[half + i] = x2 * cos[i] + x1 * sin[i]
        else:
            for i in range(half):
                x1 = row[2 * i]
                x2 = row[2 * i + 1]
                row[2 * i] = x1 * cos[i] - x2 * sin[i]
                row[2 * i + 1] = x2 * cos[i] + x1 * sin[i]


@numba.njit(**JIT)
def _bad_positions(positions, max_pos):
    """Index of the first position outside [0, max_pos), or -1."""
    for t in range(positions.shape[0]):
        if positions[t] < 0 or positions[t] >= max_pos:
            return t
    return -1


@numba.njit(**JIT)
def _bad_slots(slots, num_slots):
    """Index of the first slot >= num_slots, or -1 (negative slots are padding)."""
    for t in range(slots.shape[0]):
        if slots[t] >= num_slots:
            return t
    return -1


@numba.njit(**JIT)
def _store_token(key, value, k_cache, v_cache, slot):
    """Copy one token's [Hk, D] key and value into cache slot ``slot`` (>= 0)."""
    block_size = k_cache.shape[1]
    blk = slot // block_size
    off = slot - blk * block_size
    kd = k_cache[blk, off]
    vd = v_cache[blk, off]
    for h in range(key.shape[0]):
        for d in range(key.shape[1]):
            kd[h, d] = key[h, d]
            vd[h, d] = value[h, d]


@numba.njit(**JIT)
def _rotary_kernel(positions, q, k, cache, neox):
    """positions: [T] int64; q: [T, Hq, D], k: [T, Hk, D] float32, rotated in place; cache: [P, R].

    Returns the index of a bad position (nothing rotated), or -1.
    """
    bad = _bad_positions(positions, cache.shape[0])
    if bad >= 0:
        return bad
    for t in range(positions.shape[0]):
        _rotate_token(q[t], cache, positions[t], neox)
        _rotate_token(k[t], cache, positions[t], neox)
    return -1


@numba.njit(**JIT)
def _store_kernel(key, value, k_cache, v_cache, slots):
    """key, value: [T, Hk, D]; k_cache, v_cache: [N, S, Hk, D] written; slots: [T] int64.

    Returns the index of a slot past the cache (nothing written), or -1.
    """
    bad = _bad_slots(slots, k_cache.shape[0] * k_cache.shape[1])
    if bad >= 0:
        return bad
    for t in range(slots.shape[0]):
        if slots[t] >= 0:
            _store_token(key[t], value[t], k_cache, v_cache, slots[t])
    return -1


@numba.njit(**JIT)
def _rotary_store_kernel(positions, q, k, v, cache, k_cache, v_cache, slots, neox):
    """Rotary of q and k in place, then k and v into the cache, token by token.

    Returns 0 when done, 1 + t for a bad position of token t, -(1 + t) for a bad
    slot of token t (nothing written in either case).
    """
    bad = _bad_positions(positions, cache.shape[0])
    if bad >= 0:
        return 1 + bad
    bad = _bad_slots(slots, k_cache.shape[0] * k_cache.shape[1])
    if bad >= 0:
        return -(1 + bad)
    for t in range(positions.shape[0]):
        _rotate_token(q[t], cache, positions[t], neox)
        _rotate_token(k[t], cache, positions[t], neox)
        if slots[t] >= 0:
            _store_token(k[t], v[t], k_cache, v_cache, slots[t])
    return 0


def _check_rotary(op: str, positions, q, k, cos_sin_cache) -> None:
    check_tensor(op, "positions", positions, ndim=1, dtypes=(torch.int32, torch.int64), unit_last_stride=False)
    tokens = positions.shape[0]
    check_tensor(op, "q", q, shape=(tokens, None, None), dtypes=FLOAT_DTYPES)
    check_tensor(op, "k", k, shape=(tokens, None, q.shape[2]), dtypes=(q.dtype,))
    check_tensor(op, "cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,))
    check_cpu(op, positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)
    rot = cos_sin_cache.shape[1]
    if rot == 0 or rot % 2 or rot > q.shape[2]:
        raise KernelError(f"{op}: rotary dim R={rot} must be even, positive and <= head_dim {q.shape[2]}")


def _check_store(op: str, key, value, k_cache, v_cache, slot_mapping) -> None:
    check_tensor(op, "slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32, torch.int64), unit_last_stride=False)
    tokens = slot_mapping.shape[0]
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor(op, "v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,))
    heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    check_tensor(op, "key", key, shape=(tokens, heads, head_dim), dtypes=FLOAT_DTYPES)
    check_tensor(op, "value", value, shape=(tokens, heads, head_dim), dtypes=FLOAT_DTYPES)
    check_cpu(op, key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)


def _slot_message(op: str, slots: np.ndarray, t: int, k_cache: torch.Tensor) -> str:
    blocks, size = k_cache.shape[0], k_cache.shape[1]
    return f"{op}: slot {int(slots[t])} of token {t} is past the cache ({blocks} blocks of {size})"


def _rotary_fast(positions, q, k, cos_sin_cache) -> bool:
    return (
        is_f32(q, 3)
        and is_f32(k, 3)
        and is_f32(cos_sin_cache, 2)
        and k.shape[0] == q.shape[0] == positions.shape[0]
        and k.shape[2] == q.shape[2]
        and 0 < cos_sin_cache.shape[1] <= q.shape[2]
        and cos_sin_cache.shape[1] % 2 == 0
    )


def _store_fast(key, value, k_cache, v_cache, slot_mapping) -> bool:
    return (
        is_f32(key, 3)
        and is_f32(value, 3)
        and is_f32(k_cache, 4)
        and is_f32(v_cache, 4)
        and k_cache.shape == v_cache.shape
        and key.shape == value.shape
        and key.shape[0] == slot_mapping.shape[0]
        and key.shape[1:] == k_cache.shape[2:]
    )


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """Rotate q and k in place by their positions (Numba).

    Args:
        positions: [T] int32/int64 absolute positions, each in ``[0, max_pos)``.
        q: [T, Hq, D] float32 queries; rotated in place.
        k: [T, Hk, D] float32 keys; rotated in place.
        cos_sin_cache: [max_pos, R] float32, cos | sin halves, ``R <= D``, R even.
        is_neox: half-split (True) or interleaved GPT-J (False) layout.

    Raises:
        KernelError: wrong shapes, dtypes, devices, or a position outside the
        table. Non-contiguous q/k and other dtypes fall back to the torch op.
    """
    op = "rotary_embedding"
    pos = index_array(op, "positions", positions, torch.int64, 1)
    if not _rotary_fast(positions, q, k, cos_sin_cache):
        _check_rotary(op, positions, q, k, cos_sin_cache)
        return torch_ops.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    bad = _rotary_kernel(pos, q.numpy(), k.numpy(), array(cos_sin_cache), bool(is_neox))
    if bad >= 0:
        raise KernelError(
            f"{op}: position {int(pos[bad])} of token {bad} is outside the table [0, {len(cos_sin_cache)})"
        )
    return None


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys and values into the paged cache (Numba).

    Args:
        key: [T, Hk, D] float32 new keys.
        value: [T, Hk, D] float32 new values.
        k_cache: [num_blocks, block_size, Hk, D] float32, contiguous; written in place.
        v_cache: same shape; written in place.
        slot_mapping: [T] int32/int64 flat slot (block * block_size + offset);
            negative slots are padding and are skipped.

    Raises:
        KernelError: wrong shapes, dtypes, devices, or a slot past the cache
        (nothing is written then). Other dtypes and non-contiguous caches fall
        back to ``torch_ops.store_kv``.
    """
    op = "store_kv"
    slots = index_array(op, "slot_mapping", slot_mapping, torch.int64, 1)
    if not _store_fast(key, value, k_cache, v_cache, slot_mapping):
        _check_store(op, key, value, k_cache, v_cache, slot_mapping)
        caches_ok = is_f32(k_cache, 4) and is_f32(v_cache, 4)
        if not caches_ok or key.dtype is not torch.float32 or value.dtype is not torch.float32:
            return torch_ops.store_kv(key, value, k_cache, v_cache, slot_mapping)
        key, value = key.contiguous(), value.contiguous()
    bad = _store_kernel(key.numpy(), value.numpy(), k_cache.numpy(), v_cache.numpy(), slots)
    if bad >= 0:
        raise KernelError(_slot_message(op, slots, bad, k_cache))
    return None


def rotary_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """``rotary_embedding(positions, q, k, ...)`` then ``store_kv(k, v, ...)``, in one pass (Numba).

    Same arguments and effects as the two ops in sequence: q and k are rotated
    in place and the rotated k and v are written to their cache slots.

    Raises:
        KernelError: as either op (nothing is written on a bad index).
        Other dtypes and non-contiguous q/k/v fall back to the two torch ops.
    """
    op = "rotary_store_kv"
    pos = index_array(op, "positions", positions, torch.int64, 1)
    slots = index_array(op, "slot_mapping", slot_mapping, torch.int64, 1)
    if not (_rotary_fast(positions, q, k, cos_sin_cache) and _store_fast(k, v, k_cache, v_cache, slot_mapping)):
        _check_rotary(op, positions, q, k, cos_sin_cache)
        _check_store(op, k, v, k_cache, v_cache, slot_mapping)
        torch_ops.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
        return torch_ops.store_kv(k, v, k_cache, v_cache, slot_mapping)
    status = _rotary_store_kernel(
        pos,
        q.numpy(),
        k.numpy(),
        v.numpy(),
        array(cos_sin_cache),
        k_cache.numpy(),
        v_cache.numpy(),
        slots,
        bool(is_neox),
    )
    if status > 0:
        t = status - 1
        raise KernelError(f"{op}: position {int(pos[t])} of token {t} is outside the table [0, {len(cos_sin_cache)})")
    if status < 0:
        t = -status - 1
        raise KernelError(_slot_message(op, slots, t, k_cache))
    return None
