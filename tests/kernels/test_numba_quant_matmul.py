"""The Numba dequantize kernels (float32 and bfloat16 output, whole weights, tile runs) against written-out math,
and the repack's float16 scales and mins."""

import numpy as np
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
    """packed [N, K/2], scales/mins [N, K/G] float16 (as GGUF holds them)."""
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    scales, mins = torch.rand(n, k // group, generator=g) * 0.1, torch.randn(n, k // group, generator=g) * 0.1
    return packed, scales.half(), mins.half()


def random_int8(n: int, k: int, group: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return q, torch.rand(n, k // group, generator=g).half()


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
    scales = torch.rand(70).half()
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
    # int4 weights W = q · scale + min with min = ±1, q = 1 or 3 (every value float16-exact, W exact in float32)
    cases = [  # (q, scale, min, bfloat16 of W)
        (1, 2**-8, one, 1.0),  # 1 + 2^-8: halfway between 1 and 1 + 2^-7, to 1 (even)
        (3, 2**-8, one, one + 2**-6),  # 1 + 3·2^-8: halfway between 1 + 2^-7 and 1 + 2^-6, to 1 + 2^-6 (even)
        (1, 2**-8 + 2**-17, one, one + 2**-7),  # just above halfway: up
        (1, -(2**-8), -one, -1.0),
        (1, float("inf"), one, float("inf")),
        (1, float("-inf"), one, float("-inf")),
    ]
    q = torch.tensor([c[0] for c in cases], dtype=torch.uint8)
    packed = (q | (q << 4))[:, None].expand(-1, 16).contiguous()  # [6, 16]: every value of row r is q_r
    scales = torch.tensor([[c[1]] for c in cases], dtype=torch.float16)
    mins = torch.tensor([[c[2]] for c in cases], dtype=torch.float16)
    buf = torch.empty(32, nq.TILE, dtype=torch.bfloat16)
    got = nq.dequantize_int4_t(*nq.repack_int4(packed, scales, mins), len(cases), buf)  # [32, 6]
    assert (got == torch.tensor([c[3] for c in cases], dtype=torch.bfloat16)).all()
    assert torch.equal(got, nq.dequantize_int4_t(*nq.repack_int4(packed, scales, mins), len(cases)).bfloat16())
    nan_scales = torch.tensor([[float("nan")], [1.0]], dtype=torch.float16)
    out4 = nq.dequantize_int4_t(*nq.repack_int4(packed[:2], nan_scales, torch.zeros(2, 1)), 2, buf)
    assert out4[:, 0].isnan().all() and (out4[:, 1] == 3.0).all()  # row 1: q = 3, scale 1
    # float32 values float16 scales cannot reach: the rounding step itself (+0x8000 would wrap all-ones NaN to 0)
    specials = np.array([0xFFFFFFFF, 0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F808001], np.uint32)  # NaN, max, ties
    expected = torch.from_numpy(specials.view(np.float32)).bfloat16().view(torch.int16).numpy().view(np.uint16)
    rounded = np.array([nq._bf16_bits(u) for u in specials], np.uint16)
    assert np.array_equal(rounded[1:], expected[1:]) and rounded[0] & 0x7FFF > 0x7F80  # still NaN


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


def test_repack_holds_float16_scales_rounded_to_nearest():
    """Float16 sources stay exact; float32 ones become the nearest float16 (what `rusteeze quantize` writes)."""
    packed, scales, mins = random_int4(70, 64, 32, 11)
    _, s, mn = nq.repack_int4(packed, scales.float(), mins.float())  # float16 values held as float32: exact
    assert s.dtype == mn.dtype == torch.float16 and s.shape == (2, 2, nq.TILE)
    assert torch.equal(s.transpose(1, 2).reshape(-1, 2)[:70], scales)
    assert torch.equal(mn.transpose(1, 2).reshape(-1, 2)[:70], mins)
    assert (s.transpose(1, 2).reshape(-1, 2)[70:] == 0).all()  # padding rows
    fine = torch.rand(70, 2, dtype=torch.float64).float() * 0.1  # not float16 values: rounded
    q, _ = random_int8(70, 64, 32, 12)
    _, s8 = nq.repack_int8(q, fine)
    assert torch.equal(s8.transpose(1, 2).reshape(-1, 2)[:70], fine.half())
    specials = torch.tensor([[float("nan"), float("inf")], [float("-inf"), -0.0]])  # kept as they are
    _, s8 = nq.repack_int8(q[:2], specials)
    assert torch.equal(s8[0, :, :2].T.float().nan_to_num(7.0), specials.nan_to_num(7.0))


@pytest.mark.parametrize(
    ("kind", "fill", "value"),
    [
        ("int8", 0.5, 1e5),
        ("int8", 0.5, -7e4),
        ("int8", 1e-5, 1e-9),
        ("int4 scales", 3e-5, 2e-8),
        ("int4 mins", 0, 1e-9),
    ],
)
def test_repack_rejects_values_float16_cannot_hold(kind, fill, value):
    """Past ±65504 a value would be inf; a whole tensor below float16's normal range would lose its small values."""
    scales, mins = torch.full((3, 2), 0.5), torch.zeros(3, 2)
    target = mins if kind == "int4 mins" else scales
    target.fill_(fill)
    target[2, 1] = value
    q = torch.ones(3, 64, dtype=torch.int8)
    with pytest.raises(KernelError, match=r"\[2, 1\].*kernel_backend=\"torch\""):
        if kind == "int8":
            nq.repack_int8(q, scales)
        else:
            nq.repack_int4(q.to(torch.uint8)[:, :32], scales, mins)


def test_repack_flushes_values_below_float16_next_to_normal_ones():
    """quantize_int8 gives an all-zero row a scale of ~1e-14: next to normal scales it becomes 0 (error < 2^-25)."""
    q = torch.zeros(3, 64, dtype=torch.int8)
    q[0] = 5  # row 0 holds values at scale 0.25 (group 0) and 1e-14 (group 1); rows 1-2 are zeros
    scales = torch.tensor([[0.25, 1e-14], [1e-14, 1e-14], [1e-7, 3e-8]])  # 1e-7, 3e-8: float16 subnormals
    _, s = nq.repack_int8(q, scales)
    assert s[0, :, :3].T.tolist() == [[0.25, 0.0], [0.0, 0.0], [2 * 2.0**-24, 2.0**-24]]
    w = nq.dequantize_int8_t(*nq.repack_int8(q, scales), 3).T
    assert (w[0, :32] == 1.25).all() and (w[0, 32:] == 0).all() and (w[1:] == 0).all()
    mins = torch.tensor([[0.1, 1e-9]])
    _, _, mn = nq.repack_int4(torch.zeros(1, 32, dtype=torch.uint8), torch.ones(1, 2), mins)
    assert mn[0, :, 0].tolist() == [torch.tensor(0.1).half().item(), 0.0]


def test_kernels_take_float16_scales_only():
    packed, scales, mins = random_int4(64, 32, 32, 13)
    w, s, mn = nq.repack_int4(packed, scales, mins)
    with pytest.raises(KernelError, match="float16"):
        nq.int4_matmul(torch.ones(1, 32), w, s.float(), mn, 64)
    with pytest.raises(KernelError, match="float16"):
        nq.dequantize_int4_t(w, s, mn.float(), 64)
