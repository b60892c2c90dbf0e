"""Numba rotary embedding, KV-cache store and the fused rotary + store against the torch ops."""

import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_rotary_kv as nrk
from rusteeze.kernels import torch_ops

TOL = {"atol": 1e-5, "rtol": 1e-5}


def rope_table(max_pos: int, rot: int) -> torch.Tensor:
    inv = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()


def _qkv(tokens, hq, hk, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, h, dim, generator=gen) for h in (hq, hk, hk))


CASES = [
    # (tokens, Hq, Hk, D, R, neox)
    pytest.param(1, 9, 3, 64, 64, True, id="smollm2-decode"),
    pytest.param(16, 9, 3, 64, 64, True, id="smollm2-batch"),
    pytest.param(5, 4, 4, 48, 48, True, id="mha-d48"),
    pytest.param(6, 8, 2, 64, 32, True, id="partial-neox"),
    pytest.param(4, 3, 1, 48, 48, False, id="gptj"),
    pytest.param(3, 4, 2, 20, 12, False, id="gptj-partial"),
]


@pytest.mark.parametrize(("tokens", "hq", "hk", "dim", "rot", "neox"), CASES)
def test_rotary_matches_torch(tokens, hq, hk, dim, rot, neox):
    table = rope_table(300, rot)
    positions = torch.tensor([0, 1, 299, 17, 128, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15][:tokens])
    q, k, _ = _qkv(tokens, hq, hk, dim)
    q_ref, k_ref = q.clone(), k.clone()
    assert nrk.rotary_embedding(positions, q, k, table, neox) is None
    torch_ops.rotary_embedding(positions, q_ref, k_ref, table, neox)
    torch.testing.assert_close(q, q_ref, **TOL)
    torch.testing.assert_close(k, k_ref, **TOL)


def test_rotary_int32_positions_strided_fallback_and_bad_position():
    table = rope_table(50, 16)
    q, k, _ = _qkv(3, 2, 1, 16, seed=1)
    q_ref, k_ref = q.clone(), k.clone()
    nrk.rotary_embedding(torch.tensor([3, 4, 49], dtype=torch.int32), q, k, table)
    torch_ops.rotary_embedding(torch.tensor([3, 4, 49]), q_ref, k_ref, table)
    torch.testing.assert_close(q, q_ref, **TOL)
    qkv = torch.randn(3, 4 * 16)  # q/k as strided views of a fused projection: the torch op rotates them in place
    qv, kv = qkv[:, :32].view(3, 2, 16), qkv[:, 32:48].view(3, 1, 16)
    expected = qkv.clone()
    torch_ops.rotary_embedding(
        torch.tensor([1, 2, 3]), expected[:, :32].view(3, 2, 16), expected[:, 32:48].view(3, 1, 16), table
    )
    nrk.rotary_embedding(torch.tensor([1, 2, 3]), qv, kv, table)
    torch.testing.assert_close(qkv, expected, **TOL)
    before = q.clone()
    with pytest.raises(KernelError, match="position 50 of token 1 is outside the table"):
        nrk.rotary_embedding(torch.tensor([0, 50, 1]), q, k, table)
    assert torch.equal(q, before)  # nothing rotated


def _cache(num_blocks, block_size, hk, dim):
    k_cache = torch.full((num_blocks, block_size, hk, dim), float("nan"))
    return k_cache, k_cache.clone()


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_store_kv_matches_torch_with_padding(slot_dtype):
    k_cache, v_cache = _cache(5, 3, 3, 48)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    slots = torch.tensor([12, 13, 14, 3, -1, 7, 8, -1], dtype=slot_dtype)
    _, key, value = _qkv(8, 1, 3, 48, seed=2)
    nrk.store_kv(key, value, k_cache, v_cache, slots)
    torch_ops.store_kv(key, value, k_ref, v_ref, slots)
    assert torch.equal(k_cache.nan_to_num(7.0), k_ref.nan_to_num(7.0))
    assert torch.equal(v_cache.nan_to_num(7.0), v_ref.nan_to_num(7.0))


def test_store_kv_strided_inputs_fallback_and_bad_slot():
    k_cache, v_cache = _cache(3, 4, 2, 8)
    qkv = torch.randn(4, 4 * 16)
    key, value = qkv[:, 32:48].view(4, 2, 8), qkv[:, 48:].view(4, 2, 8)
    slots = torch.tensor([0, 5, -1, 11])
    nrk.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.flatten(0, 1)[[0, 5, 11]], key[[0, 1, 3]])
    assert torch.equal(v_cache.flatten(0, 1)[[0, 5, 11]], value[[0, 1, 3]])
    half_k, half_v = torch.zeros(3, 4, 2, 8, dtype=torch.float16), torch.zeros(3, 4, 2, 8, dtype=torch.float16)
    nrk.store_kv(key, value, half_k, half_v, slots)  # torch fallback casts into the fp16 cache
    assert torch.equal(half_k.flatten(0, 1)[5], key[1].half())
    before = k_cache.clone()
    with pytest.raises(KernelError, match="slot 12 of token 1 is past the cache"):
        nrk.store_kv(key, value, k_cache, v_cache, torch.tensor([1, 12, 2, 3]))
    assert torch.equal(before.nan_to_num(7.0), k_cache.nan_to_num(7.0))  # nothing written


@pytest.mark.parametrize(("tokens", "hq", "hk", "dim", "rot", "neox"), CASES)
def test_rotary_store_equals_rotary_then_store(tokens, hq, hk, dim, rot, neox):
    table = rope_table(300, rot)
    positions = torch.arange(tokens) * 7 + 3
    slots = torch.randperm(4 * 8, generator=torch.Generator().manual_seed(tokens))[:tokens]
    slots[tokens // 2] = -1
    q, k, v = _qkv(tokens, hq, hk, dim, seed=3)
    q_ref, k_ref = q.clone(), k.clone()
    k_cache, v_cache = _cache(4, 8, hk, dim)
    k_cache_ref, v_cache_ref = k_cache.clone(), v_cache.clone()
    nrk.rotary_store_kv(positions, q, k, v, table, k_cache, v_cache, slots, neox)
    torch_ops.rotary_embedding(positions, q_ref, k_ref, table, neox)
    torch_ops.store_kv(k_ref, v, k_cache_ref, v_cache_ref, slots)
    torch.testing.assert_close(q, q_ref, **TOL)
    torch.testing.assert_close(k, k_ref, **TOL)
    torch.testing.assert_close(k_cache.nan_to_num(7.0), k_cache_ref.nan_to_num(7.0), **TOL)
    assert torch.equal(v_cache.nan_to_num(7.0), v_cache_ref.nan_to_num(7.0))


def test_rotary_store_rejects_bad_indices_before_writing():
    table = rope_table(10, 8)
    q, k, v = _qkv(2, 2, 1, 8, seed=4)
    k_cache, v_cache = _cache(2, 2, 1, 8)
    q0 = q.clone()
    with pytest.raises(KernelError, match="position 10 of token 1"):
        nrk.rotary_store_kv(torch.tensor([0, 10]), q, k, v, table, k_cache, v_cache, torch.tensor([0, 1]))
    with pytest.raises(KernelError, match="slot 4 of token 0"):
        nrk.rotary_store_kv(torch.tensor([0, 1]), q, k, v, table, k_cache, v_cache, torch.tensor([4, 1]))
    assert torch.equal(q, q0)
    assert torch.isnan(k_cache).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"key": torch.zeros(3, 3, 8)}, "key has shape"),
        ({"value": torch.zeros(2, 2, 8)}, "value has shape"),
        ({"v_cache": torch.zeros(4, 4, 2, 4)}, "v_cache has shape"),
        ({"v_cache": torch.zeros(4, 4, 2, 8, dtype=torch.float16)}, "v_cache has dtype"),
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
    with pytest.raises(KernelError, match=match):
        nrk.store_kv(args["key"], args["value"], args["k_cache"], args["v_cache"], args["slots"])


def test_rotary_rejects_bad_arguments():
    q, k, _ = _qkv(2, 2, 1, 8)
    with pytest.raises(KernelError, match="rotary dim"):
        nrk.rotary_embedding(torch.tensor([0, 1]), q, k, rope_table(4, 16))
    with pytest.raises(KernelError, match="k has shape"):
        nrk.rotary_embedding(torch.tensor([0, 1]), q, torch.zeros(2, 1, 6), rope_table(4, 8))
    with pytest.raises(KernelError, match="positions has dtype"):
        nrk.rotary_embedding(torch.tensor([0.0, 1.0]), q, k, rope_table(4, 8))
