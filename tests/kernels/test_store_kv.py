"""Storing K/V into the paged cache: both backends against a per-token loop."""

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, backends, randn

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def reference_store(key, value, k_cache, v_cache, slots) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy token t to block slot // block_size, offset slot % block_size, unless slot < 0."""
    k_out, v_out = k_cache.clone().cpu(), v_cache.clone().cpu()
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            k_out[slot // block_size, slot % block_size] = key[t].cpu().to(k_out.dtype)
            v_out[slot // block_size, slot % block_size] = value[t].cpu().to(v_out.dtype)
    return k_out, v_out


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_store_kv_with_padding_and_partial_blocks(ops, dtype, slot_dtype):
    num_blocks, block_size, heads, dim = 5, 3, 2, 12
    k_cache = randn(num_blocks, block_size, heads, dim, dtype=dtype, seed=1)
    v_cache = randn(num_blocks, block_size, heads, dim, dtype=dtype, seed=2)
    # Two sequences: one fills block 4 and starts block 1, one continues block 2; -1 pads.
    slots = torch.tensor([12, 13, 14, 3, -1, 7, 8, -1], dtype=slot_dtype, device=DEVICE)
    key = randn(8, heads, dim, dtype=dtype, seed=3)
    value = randn(8, heads, dim, dtype=dtype, seed=4)
    expected_k, expected_v = reference_store(key, value, k_cache, v_cache, slots)
    ops.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.cpu(), expected_k)
    assert torch.equal(v_cache.cpu(), expected_v)


@pytest.mark.parametrize("ops", backends())
def test_store_kv_casts_and_reads_strided_views(ops):
    """fp32 keys/values taken from a fused qkv projection, stored into an fp16 cache."""
    tokens, heads, dim = 4, 2, 8
    qkv = randn(tokens, 4 * heads * dim, seed=5)
    key = qkv[:, 2 * heads * dim : 3 * heads * dim].view(tokens, heads, dim)
    value = qkv[:, 3 * heads * dim :].view(tokens, heads, dim)
    k_cache = torch.zeros(3, 4, heads, dim, dtype=torch.float16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([0, 5, -1, 11], device=DEVICE)
    expected_k, expected_v = reference_store(key, value, k_cache, v_cache, slots)
    ops.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.cpu(), expected_k)
    assert torch.equal(v_cache.cpu(), expected_v)


def test_store_kv_drops_slots_past_the_cache():
    """The Triton kernel never writes out of bounds: a slot past the end is dropped."""
    k_cache = torch.zeros(2, 2, 1, 4, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    key = torch.ones(2, 1, 4, device=DEVICE)
    triton_ops.store_kv(key, key, k_cache, v_cache, torch.tensor([4, 1], device=DEVICE))
    assert k_cache.flatten(0, 1)[:, 0, 0].tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"key": torch.zeros(3, 3, 8)}, "key has shape"),
        ({"value": torch.zeros(2, 2, 8)}, "value has shape"),
        ({"v_cache": torch.zeros(4, 4, 2, 4)}, "v_cache has shape"),
        ({"v_cache": torch.zeros(4, 4, 2, 8, dtype=torch.float16)}, "v_cache has dtype"),
        ({"v_cache": torch.zeros(4, 2, 4, 8).transpose(1, 2)}, "v_cache strides"),
        ({"k_cache": torch.zeros(16, 2, 8), "v_cache": torch.zeros(16, 2, 8)}, "k_cache must have 4 dimensions"),
        ({"slots": torch.zeros(3)}, "slot_mapping has dtype"),
        ({"key": torch.zeros(3, 2, 8, dtype=torch.int32)}, "key has dtype"),
    ],
)
def test_store_kv_rejects_bad_arguments(change, match):
    args = {
        "key": torch.zeros(3, 2, 8),
        "value": torch.zeros(3, 2, 8),
        "k_cache": torch.zeros(4, 4, 2, 8),
        "v_cache": torch.zeros(4, 4, 2, 8),
        "slots": torch.zeros(3, dtype=torch.int64),
    }
    args.update(change)
    args = {name: t.to(DEVICE) for name, t in args.items()}
    with pytest.raises(KernelError, match=match):
        triton_ops.store_kv(args["key"], args["value"], args["k_cache"], args["v_cache"], args["slots"])
