"""Store new keys and values into the paged KV cache through a slot mapping.

Token ``t`` goes to flat slot ``s = slot_mapping[t]``, i.e. block ``s // block_size``,
offset ``s % block_size``; ``s < 0`` (padding) stores nothing, and a slot past the
end of the cache is dropped rather than written out of bounds. One program
copies the ``Hk·D`` values of one token for K and for V, casting to the cache dtype.

Memory traffic per token: read ``2·Hk·D`` input elements, write ``2·Hk·D``
cache elements, read one slot index.
"""

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor


@triton.jit
def _store_kv_kernel(
    key_ptr,  # [T, Hk, D] new keys
    value_ptr,  # [T, Hk, D] new values
    k_cache_ptr,  # [num_blocks, block_size, Hk, D] written in place
    v_cache_ptr,  # [num_blocks, block_size, Hk, D] written in place
    slot_ptr,  # [T] int32/int64 flat slot per token, -1 = skip
    stride_kt,  # key: elements between tokens
    stride_kh,  # key: elements between heads
    stride_vt,  # value: elements between tokens
    stride_vh,  # value: elements between heads
    stride_cb,  # cache: elements between blocks (same for k_cache and v_cache)
    stride_cs,  # cache: elements between slots in a block
    stride_ch,  # cache: elements between heads
    num_slots,  # num_blocks * block_size: slots >= this are dropped
    block_size,  # slots per block
    num_heads,  # Hk
    head_dim,  # D
    BLOCK_H: tl.constexpr,  # power of two >= Hk
    BLOCK_D: tl.constexpr,  # power of two >= D
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if (slot >= 0) & (slot < num_slots):
        block = slot // block_size
        offset = slot % block_size
        heads = tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
        dims = tl.arange(0, BLOCK_D)[None, :]  # [1, BLOCK_D]
        mask = (heads < num_heads) & (dims < head_dim)
        cache_off = block * stride_cb + offset * stride_cs + heads * stride_ch + dims
        k = tl.load(key_ptr + tok * stride_kt + heads * stride_kh + dims, mask=mask)
        tl.store(k_cache_ptr + cache_off, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        v = tl.load(value_ptr + tok * stride_vt + heads * stride_vh + dims, mask=mask)
        tl.store(v_cache_ptr + cache_off, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys and values into the paged cache (Triton).

    Args:
        key: [T, Hk, D] new keys (any token/head strides, unit last stride).
        value: [T, Hk, D] new values.
        k_cache: [num_blocks, block_size, Hk, D]; written in place.
        v_cache: same shape, strides and dtype as k_cache; written in place.
        slot_mapping: [T] int32/int64 flat slot of each token; negative slots
            are skipped, slots ``>= num_blocks * block_size`` are dropped.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides.
    """
    op = "store_kv"
    check_tensor(op, "slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES, unit_last_stride=False)
    tokens = slot_mapping.shape[0]
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    num_blocks, block_size, heads, head_dim = k_cache.shape
    check_tensor(op, "v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,))
    if v_cache.stride() != k_cache.stride():
        raise KernelError(f"{op}: v_cache strides {v_cache.stride()} differ from k_cache strides {k_cache.stride()}")
    check_tensor(op, "key", key, shape=(tokens, heads, head_dim), dtypes=FLOAT_DTYPES)
    check_tensor(op, "value", value, shape=(tokens, heads, head_dim), dtypes=FLOAT_DTYPES)
    check_same_device(op, key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if tokens == 0 or k_cache.numel() == 0:
        return
    _store_kv_kernel[(tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        num_blocks * block_size,
        block_size,
        heads,
        head_dim,
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )
