"""The Numba dequantize kernels (float32 and bfloat16 output, whole weights, tile runs) against written-out math."""

import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_quant_matmul as nq


def int4_weight(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """packed [N, K/2] (low nibble = even column), scales/mins [N, K/G] → W [N, K] float64."""
    q = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.float64)
    q[:, 0::2] = (packed & 15).double()
    q[:, 1::2] = (packed >> 4).double()
    group = q.shape[1] // scales.shape[1]
    return q * scales.double().repeat_interleave(group, 1) + mins.double().repeat_interleave(group, 1)


def int8_weight(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q [N, K] int8, scales [N, K/G] → W [N, K] float64."""
    return q.double() * scales.double().repeat_interleave(q.shape[1] // scales.shape[1], 1)


def random_int4(n: int, k: int, group: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    return packed, torch.rand(n, k // group, generator=g) * 0.1, torch.randn(n, k // group, generator=g) * 0.1


def random_int8(n: int, k: int, group: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), torch.rand(n, k // group, generator=g)


SHAPES = [(64, 32, 32), (100, 96, 32), (130, 256, 64), (9, 128, 128)]  # (N, K, G): N padded to 64s


@pytest.mark.parametrize(("n", "k", "group"), SHAPES)
def test_int4_dequantize_float32_and_bfloat16(n, k, group):
    packed, scales, mins = random_int4(n, k, group, n + k)
    tiles = nq.repack_int4(packed, scales, mins)
    expected = int4_weight(packed, scales, mins).T  # [K, N]
    f32 = nq.dequantize_int4_t(*tiles, n)
    assert f32.shape == (k, n) and f32.dtype == torch.float32
    torch.testing.assert_close(f32, expected.float(), rtol=1e-6, atol=1e-6)
    buf = torch.full((k, tiles[0].shape[0] * nq.TILE), float("nan"), dtype=torch.bfloat16)
    bf16 = nq.dequantize_int4_t(*tiles, n, buf)
    assert bf16.dtype == torch.bfloat16 and bf16.data_ptr() == buf.data_ptr()
    assert torch.equal(bf16, f32.bfloat16())  # float32's value rounded as torch rounds it, bit for bit
    into = torch.empty_like(buf, dtype=torch.float32)
    assert torch.equal(nq.dequantize_int4_t(*tiles, n, into), f32)


@pytest.mark.parametrize(("n", "k", "group"), SHAPES)
def test_int8_dequantize_float32_and_bfloat16(n, k, group):
    q, scales = random_int8(n, k, group, n * k)
    tiles = nq.repack_int8(q, scales)
    f32 = nq.dequantize_int8_t(*tiles, n)
    torch.testing.assert_close(f32, int8_weight(q, scales).T.float(), rtol=1e-6, atol=1e-6)
    buf = torch.empty(k, tiles[0].shape[0] * nq.TILE, dtype=torch.bfloat16)
    assert torch.equal(nq.dequantize_int8_t(*tiles, n, buf), f32.bfloat16())


def test_per_row_int8_scales():
    q, _ = random_int8(70, 48, 48, 5)
    scales = torch.rand(70)
    f32 = nq.dequantize_int8_t(*nq.repack_int8(q, scales), 70)
    torch.testing.assert_close(f32, (q.double() * scales.double()[:, None]).T.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_run_of_tiles_is_those_columns(dtype):
    """Tiles a..b (rows aR..bR of W) dequantize to the same columns as the whole weight; the last run is clipped."""
    n, k = 200, 64  # 4 tiles, the last holding 8 rows
    packed, scales, mins = random_int4(n, k, 32, 3)
    w, s, mn = nq.repack_int4(packed, scales, mins)
    q, qs = random_int8(n, k, 32, 4)
    w8, s8 = nq.repack_int8(q, qs)
    whole4, whole8 = nq.dequantize_int4_t(w, s, mn, n), nq.dequantize_int8_t(w8, s8, n)
    for a, b in [(0, 1), (1, 3), (3, 4)]:
        cols = min(n, b * nq.TILE) - a * nq.TILE
        out = torch.empty(k, (b - a) * nq.TILE, dtype=dtype)
        part = nq.dequantize_int4_t(w[a:b], s[a:b], mn[a:b], cols, out)
        assert torch.equal(part, whole4[:, a * nq.TILE : a * nq.TILE + cols].to(dtype))
        part = nq.dequantize_int8_t(w8[a:b], s8[a:b], cols, out)
        assert torch.equal(part, whole8[:, a * nq.TILE : a * nq.TILE + cols].to(dtype))


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials():
    """Ties go to the even mantissa; NaN stays NaN (a plain round-up would make some NaNs inf or 0); ±inf stay."""
    one = 1.0
    values = [
        one + 2**-8,  # halfway between 1 and 1 + 2^-7: to 1 (even)
        one + 3 * 2**-8,  # halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 (even)
        one + 2**-8 + 2**-20,  # just above halfway: up
        -(one + 2**-8),
        float("inf"),
        float("-inf"),
        float("nan"),
        3.4e38,  # past halfway above bfloat16's largest finite value: inf, as torch rounds it
    ]
    all_ones_nan = torch.tensor([-1], dtype=torch.int32).view(torch.float32)  # bits 0xFFFFFFFF: +0x8000 wraps to 0
    scales = torch.cat((torch.tensor(values), all_ones_nan))[:, None]  # [9, 1]: W[r, c] = q · scale_r
    q = torch.ones(len(scales), 32, dtype=torch.int8)
    buf = torch.empty(32, nq.TILE, dtype=torch.bfloat16)
    got = nq.dequantize_int8_t(*nq.repack_int8(q, scales), len(scales), buf)[0]  # [9]
    expected = scales[:, 0].bfloat16()
    bits, torch_bits = got.view(torch.int16).tolist(), expected.view(torch.int16).tolist()
    assert bits[:6] + bits[7:8] == torch_bits[:6] + torch_bits[7:8]
    assert got[:4].tolist() == [1.0, one + 2**-6, one + 2**-7, -1.0]
    assert got[4:6].tolist() == [float("inf"), float("-inf")] and got[7] == float("inf")
    assert got[6].isnan() and got[8].isnan()
    packed = torch.full((2, 16), 0x11, dtype=torch.uint8)  # every value q = 1: W = scale + min
    nan_scales = torch.tensor([[float("nan")], [1.0]])
    out4 = nq.dequantize_int4_t(*nq.repack_int4(packed, nan_scales, torch.full((2, 1), 2**-8)), 2, buf)
    assert out4[:, 0].isnan().all() and (out4[:, 1] == 1.0).all()  # 1 + 2^-8 ties to 1


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((32, 64), torch.float16), ((32, 63), torch.float32), ((16, 64), torch.bfloat16)],
)
def test_dequantize_rejects_a_wrong_out_buffer(shape, dtype):
    tiles = nq.repack_int8(*random_int8(64, 32, 32, 7))
    with pytest.raises(KernelError, match="out must be"):
        nq.dequantize_int8_t(*tiles, 64, torch.empty(shape, dtype=dtype))
    with pytest.raises(KernelError, match="out must be"):
        nq.dequantize_int8_t(*tiles, 64, torch.empty(64, 32).T)  # [32, 64] but not contiguous
