"""Rotary embedding (neox and GPT-J, partial rotary, llama3 frequencies): both backends against loops."""

import math

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def inv_frequencies(rot: int, base: float = 10000.0, llama3: bool = False) -> list[float]:
    """RoPE inverse frequencies, optionally with Llama 3.1's piecewise scaling, one by one."""
    freqs = [base ** (-2 * i / rot) for i in range(rot // 2)]
    if not llama3:
        return freqs
    factor, low_factor, high_factor, original_max = 8.0, 1.0, 4.0, 64  # a small original context
    low_wavelen, high_wavelen = original_max / low_factor, original_max / high_factor
    scaled = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            scaled.append(f)
        elif wavelen > low_wavelen:
            scaled.append(f / factor)
        else:
            smooth = (original_max / wavelen - low_factor) / (high_factor - low_factor)
            scaled.append((1 - smooth) * f / factor + smooth * f)
    return scaled


def cos_sin_cache(max_pos: int, rot: int, llama3: bool = False) -> torch.Tensor:
    """[max_pos, R] float32: cos | sin of position × frequency."""
    freqs = torch.tensor(inv_frequencies(rot, llama3=llama3), dtype=torch.float64)
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float().to(DEVICE)


def reference_rotary(positions, t, cache, is_neox) -> torch.Tensor:
    """Rotate each (token, pair) of t [T, H, D] in float64 with a loop."""
    t = t.double().cpu()
    cache = cache.double().cpu()
    out = t.clone()
    half = cache.shape[1] // 2
    for tok, pos in enumerate(positions.tolist()):
        for i in range(half):
            cos, sin = cache[pos, i], cache[pos, half + i]
            a, b = (i, i + half) if is_neox else (2 * i, 2 * i + 1)
            x1, x2 = t[tok, :, a], t[tok, :, b]
            out[tok, :, a] = x1 * cos - x2 * sin
            out[tok, :, b] = x2 * cos + x1 * sin
    return out


CASES = [
    # (tokens, q heads, k heads, head dim, rotary dim, neox, llama3)
    pytest.param(5, 4, 2, 16, 16, True, False, id="neox-gqa"),
    pytest.param(6, 3, 3, 24, 24, False, False, id="gptj"),
    pytest.param(4, 2, 1, 32, 16, True, True, id="neox-partial-llama3"),
    pytest.param(3, 2, 2, 20, 12, False, True, id="gptj-partial-llama3"),
]


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "hq", "hk", "dim", "rot", "neox", "llama3"), CASES)
def test_rotary_matches_reference(ops, dtype, tokens, hq, hk, dim, rot, neox, llama3):
    cache = cos_sin_cache(300, rot, llama3=llama3)
    positions = torch.tensor([0, 1, 17, 299, 128, 5][:tokens], device=DEVICE)
    q = randn(tokens, hq, dim, dtype=dtype, seed=1)
    k = randn(tokens, hk, dim, dtype=dtype, seed=2)
    expected_q = reference_rotary(positions, q, cache, neox)
    expected_k = reference_rotary(positions, k, cache, neox)
    assert ops.rotary_embedding(positions, q, k, cache, neox) is None  # in place
    assert_close(q, expected_q, dtype)
    assert_close(k, expected_k, dtype)


@pytest.mark.parametrize("ops", backends())
def test_rotary_on_views_of_a_fused_qkv_tensor(ops):
    """q and k as strided views of one [T, (Hq + 2Hk)·D] projection; v untouched."""
    tokens, hq, hk, dim = 4, 4, 2, 16
    qkv = randn(tokens, (hq + 2 * hk) * dim, seed=3)
    q = qkv[:, : hq * dim].view(tokens, hq, dim)
    k = qkv[:, hq * dim : (hq + hk) * dim].view(tokens, hk, dim)
    v_before = qkv[:, (hq + hk) * dim :].clone()
    positions = torch.tensor([3, 9, 2, 40], dtype=torch.int32, device=DEVICE)
    cache = cos_sin_cache(64, dim)
    expected_q = reference_rotary(positions, q, cache, True)
    expected_k = reference_rotary(positions, k, cache, True)
    ops.rotary_embedding(positions, q, k, cache, True)
    assert_close(q, expected_q, torch.float32)
    assert_close(k, expected_k, torch.float32)
    assert torch.equal(qkv[:, (hq + hk) * dim :], v_before)


def test_rotary_out_of_range_position_leaves_token_unrotated():
    q = randn(2, 1, 8, seed=4)
    k = randn(2, 1, 8, seed=5)
    q0, k0 = q.clone(), k.clone()
    triton_ops.rotary_embedding(torch.tensor([1, 10], device=DEVICE), q, k, cos_sin_cache(4, 8))
    assert torch.equal(q[1], q0[1]) and torch.equal(k[1], k0[1])
    assert not torch.equal(q[0], q0[0])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"cache": torch.zeros(8, 7)}, "rotary dim R=7"),
        ({"cache": torch.zeros(8, 18)}, "rotary dim R=18"),
        ({"cache": torch.zeros(8, 16, dtype=torch.float16)}, "cos_sin_cache has dtype"),
        ({"k": torch.zeros(3, 2, 16, dtype=torch.float16)}, "k has dtype"),
        ({"k": torch.zeros(3, 2, 8)}, "k has shape"),
        ({"positions": torch.zeros(3, 1, dtype=torch.int64)}, "positions must have 1 dimensions"),
        ({"positions": torch.zeros(3)}, "positions has dtype"),
        ({"q": torch.zeros(4, 2, 16)}, "q has shape"),
    ],
)
def test_rotary_rejects_bad_arguments(change, match):
    args = {
        "positions": torch.zeros(3, dtype=torch.int64),
        "q": torch.zeros(3, 2, 16),
        "k": torch.zeros(3, 2, 16),
        "cache": torch.zeros(8, 16),
    }
    args.update(change)
    args = {name: t.to(DEVICE) for name, t in args.items()}
    with pytest.raises(KernelError, match=match):
        triton_ops.rotary_embedding(args["positions"], args["q"], args["k"], args["cache"])
