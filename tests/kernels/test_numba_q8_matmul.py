"""The integer-activation (int16, int8) quantized matmuls against integer math written out here (torch, int64)."""

import numpy as np
import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_q8_matmul as q8
from rusteeze.kernels import numba_quant_matmul as nq


def quantize_reference(x: torch.Tensor, block: int, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 → (q [M, K] int64, d [M, K/B] float32): d = max|x| / qmax per block, q = round(x / d)."""
    m, k = x.shape
    blocks = x.view(m, k // block, block)
    d = blocks.abs().amax(-1) / qmax  # [M, K/B]
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(blocks * inv.unsqueeze(-1)).long()  # half to even, as np.rint
    return q.view(m, k), d


def int4_q8_reference(x, q4, scales, mins, block, qmax=127):
    """Σ_g scale·Σ_b d_b·(Σ q4·qx) + min·Σ_b d_b·Σ qx, in float64 from exact integer block sums."""
    m, k = x.shape
    qx, d = quantize_reference(x, block, qmax)
    blk = torch.einsum("mbc,nbc->mnb", qx.view(m, -1, block), q4.long().view(q4.shape[0], -1, block))  # [M, N, K/B]
    scaled = blk.double() * d.double()[:, None, :]
    xsum = qx.view(m, -1, block).sum(-1).double() * d.double()  # [M, K/B]
    per_group = k // scales.shape[1] // block
    dot = scaled.view(m, q4.shape[0], -1, per_group).sum(-1)  # [M, N, K/G]
    xg = xsum.view(m, -1, per_group).sum(-1)  # [M, K/G]
    return (dot * scales.double()[None] + xg[:, None, :] * mins.double()[None]).sum(-1)


def int8_q8_reference(x, q, scales, block, qmax=127):
    m, k = x.shape
    qx, d = quantize_reference(x, block, qmax)
    blk = torch.einsum("mbc,nbc->mnb", qx.view(m, -1, block), q.long().view(q.shape[0], -1, block))
    scaled = blk.double() * d.double()[:, None, :]
    per_group = k // scales.shape[1] // block
    return (scaled.view(m, q.shape[0], -1, per_group).sum(-1) * scales.double()[None]).sum(-1)


def pack(q4: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 → [N, K/2] uint8, column 2j in the low nibble."""
    return (q4[:, 0::2] | (q4[:, 1::2] << 4)).to(torch.uint8)


@pytest.mark.parametrize(
    ("m", "n", "k", "group"), [(1, 70, 64, 32), (3, 130, 192, 64), (8, 64, 256, 128), (2, 9, 48, 16)]
)
@pytest.mark.parametrize("bits", [8, 16])
def test_int4_q8_matches_integer_reference(m, n, k, group, bits):
    g = torch.Generator().manual_seed(m + n + k)
    q4 = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales, mins = torch.rand(n, k // group, generator=g) * 0.02, torch.randn(n, k // group, generator=g) * 0.1
    x = torch.randn(m, k, generator=g)
    x[0, :group] = 0  # an all-zero block: scale 0, no division by zero
    out = q8.int4_matmul_q8(x, *nq.repack_int4(pack(q4), scales, mins), n, bits)
    assert out.shape == (m, n) and out.dtype == torch.float32
    expected = int4_q8_reference(x, q4, scales, mins, q8.act_block(group), 127 if bits == 8 else 32767).float()
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
    float_math = x.double() @ ((q4.double() * scales.repeat_interleave(group, 1)) + mins.repeat_interleave(group, 1)).T
    error = ((out.double() - float_math).norm() / float_math.norm()).item()
    assert error < 1e-4 if bits == 16 else error > 1e-3  # x really was rounded: to near float32 with 16 bits


@pytest.mark.parametrize(
    ("m", "n", "k", "group"), [(1, 70, 100, 100), (5, 130, 64, 32), (8, 50, 96, 96), (2, 64, 128, 64)]
)
@pytest.mark.parametrize("bits", [8, 16])
def test_int8_q8_matches_integer_reference(m, n, k, group, bits):
    g = torch.Generator().manual_seed(m + n + k)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, k // group, generator=g) * 0.01
    x = torch.randn(m, k, generator=g) * 3
    out = q8.int8_matmul_q8(x, *nq.repack_int8(q, scales), n, bits)
    expected = int8_q8_reference(x, q, scales, q8.act_block(group), 127 if bits == 8 else 32767).float()
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
    float_math = x.double() @ (q.double() * scales.double().repeat_interleave(group, 1)).T
    error = ((out.double() - float_math).norm() / float_math.norm()).item()
    assert error < 1e-4 if bits == 16 else error > 1e-3  # int16 activations are near float32; int8 ones are not


def test_threaded_and_serial_drivers_are_bit_identical_and_rows_batch_invariant():
    g = torch.Generator().manual_seed(7)
    n, k, m = 320, 128, 5
    w, s, mn = nq.repack_int4(torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8),
                              torch.rand(n, 4, generator=g), torch.randn(n, 4, generator=g))  # fmt: skip
    w8, s8 = nq.repack_int8(torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), torch.rand(n, 4))
    x = torch.randn(m, k, generator=g)
    xq = np.empty((m, k), np.int16)
    xd, xs = np.empty((m, 4), np.float32), np.empty((m, 4), np.float32)
    q8.quantize_rows(x.numpy(), 32, np.float32(32767), xq, xd, xs)
    outs = [np.empty((m, n), np.float32) for _ in range(4)]
    q8.int4_q8_serial(xq, xd, xs, w.numpy(), s.numpy(), mn.numpy(), outs[0])
    q8.int4_q8_parallel(xq, xd, xs, w.numpy(), s.numpy(), mn.numpy(), outs[1])
    q8.int8_q8_serial(xq, xd, w8.numpy(), s8.numpy(), outs[2])
    q8.int8_q8_parallel(xq, xd, w8.numpy(), s8.numpy(), outs[3])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[2], outs[3])
    alone = q8.int4_matmul_q8(x[2:3], w, s, mn, n)
    assert torch.equal(alone[0], torch.from_numpy(outs[0][2]))


def test_bad_shapes_are_kernel_errors():
    w, s, mn = nq.repack_int4(torch.zeros(64, 16, dtype=torch.uint8), torch.ones(64, 1), torch.zeros(64, 1))
    with pytest.raises(KernelError, match=r"x must be \[T, 32\]"):
        q8.int4_matmul_q8(torch.ones(2, 30), w, s, mn, 64)
    with pytest.raises(KernelError, match="output rows exceed"):
        q8.int4_matmul_q8(torch.ones(2, 32), w, s, mn, 65)
    w8, s8 = nq.repack_int8(torch.ones(64, 520, dtype=torch.int8), torch.ones(64))  # one block of 520 values
    with pytest.raises(KernelError, match="at most 512"):
        q8.int8_matmul_q8(torch.ones(1, 520), w8, s8, 64, bits=16)
    with pytest.raises(KernelError, match="int8 or int16"):
        q8.int8_matmul_q8(torch.ones(1, 520), w8, s8, 64, bits=4)
