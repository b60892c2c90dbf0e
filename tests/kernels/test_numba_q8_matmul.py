"""The integer-activation (int16, int8) quantized matmuls against integer math written out here (torch, int64)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_q8_matmul as q8
from rusteeze.kernels import numba_quant_matmul as nq
from rusteeze.kernels.numba_half import half_bits


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
    ("m", "n", "k", "group"), [(1, 70, 64, 32), (3, 130, 192, 64), (8, 64, 256, 128), (2, 9, 48, 16), (13, 67, 96, 32)]
)
@pytest.mark.parametrize("bits", [8, 16])
def test_int4_q8_matches_integer_reference(m, n, k, group, bits):
    g = torch.Generator().manual_seed(m + n + k)
    q4 = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales, mins = torch.rand(n, k // group, generator=g) * 0.02, torch.randn(n, k // group, generator=g) * 0.1
    scales, mins = scales.half().float(), mins.half().float()  # float16 values, as the tiles hold them
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
    ("m", "n", "k", "group"), [(1, 70, 100, 100), (5, 130, 64, 32), (8, 50, 96, 96), (2, 64, 128, 64), (11, 65, 64, 32)]
)
@pytest.mark.parametrize("bits", [8, 16])
def test_int8_q8_matches_integer_reference(m, n, k, group, bits):
    g = torch.Generator().manual_seed(m + n + k)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, k // group, generator=g) * 0.01).half().float()  # float16 values, as the tiles hold
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
    q8.int4_q8_serial(xq, xd, xs, w.numpy(), half_bits(s), half_bits(mn), outs[0])
    q8.int4_q8_parallel(xq, xd, xs, w.numpy(), half_bits(s), half_bits(mn), outs[1])
    q8.int8_q8_serial(xq, xd, w8.numpy(), half_bits(s8), outs[2])
    q8.int8_q8_parallel(xq, xd, w8.numpy(), half_bits(s8), outs[3])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[2], outs[3])
    alone = q8.int4_matmul_q8(x[2:3], w, s, mn, n)
    assert torch.equal(alone[0], torch.from_numpy(outs[0][2]))


def _quantize(x: torch.Tensor, group: int, bits: int) -> tuple:
    """x [M, K] → (xq, xd, xs) as the wrappers quantize it."""
    m, k = x.shape
    block = q8.act_block(group)
    xq = np.empty((m, k), np.int8 if bits == 8 else np.int16)
    xd, xs = np.empty((m, k // block), np.float32), np.empty((m, k // block), np.float32)
    q8.quantize_rows(x.numpy(), block, np.float32(127 if bits == 8 else 32767), xq, xd, xs)
    return xq, xd, xs


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize(("kind", "k", "group"), [("int4", 96, 32), ("int4", 128, 64), ("int4", 80, 16),
                                                  ("int8", 96, 32), ("int8", 100, 50)])  # fmt: skip
def test_every_row_count_gives_each_row_its_one_row_result(kind, k, group, bits):
    # Rows run in blocks of 1 to 5 (one pass over each weight block); every row must still be computed
    # exactly as alone, whatever M, by both drivers: blocks of 32 take numba_pair_dot, the others the plain loop.
    g = torch.Generator().manual_seed(k + group + bits)
    n = 130
    x = torch.randn(17, k, generator=g) * 2
    x[3, :group] = 0  # an all-zero block in the middle of a row block
    if kind == "int4":
        scales, mins = torch.rand(n, k // group, generator=g), torch.randn(n, k // group, generator=g)
        tiles = nq.repack_int4(torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8), scales, mins)
        serial, parallel = q8.int4_q8_serial, q8.int4_q8_parallel
    else:
        tiles = nq.repack_int8(torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8),
                               torch.rand(n, k // group, generator=g))  # fmt: skip
        serial, parallel = q8.int8_q8_serial, q8.int8_q8_parallel
    weights = [half_bits(t) if t.dtype is torch.float16 else t.numpy() for t in tiles]  # float16 as its bits

    def run(drive, rows: torch.Tensor) -> np.ndarray:
        xq, xd, xs = _quantize(rows, group, bits)
        out = np.empty((rows.shape[0], weights[0].shape[0] * nq.TILE), np.float32)
        drive(xq, xd, *((xs,) if kind == "int4" else ()), *weights, out)
        return out

    alone = np.concatenate([run(serial, x[i : i + 1]) for i in range(17)])
    for m in range(1, 18):
        for drive in (serial, parallel):
            assert np.array_equal(run(drive, x[:m]), alone[:m]), (m, drive)


# The AVX2 and portable code of numba_pair_dot, compiled in a child process for another CPU (they run here too).
_TARGETS = {
    "haswell": ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+popcnt,+sse,+sse2,"
                "+sse3,+sse4.1,+sse4.2,+ssse3,+xsave", "vpmaddwd\\s.*%ymm"),
    "x86-64": ("+64bit,+cmov,+cx8,+fxsr,+mmx,+sse,+sse2", "\\spmaddwd\\s.*%xmm"),
}  # fmt: skip
_TARGET_CHECK = """
    import re, sys
    import numba, numpy as np
    from rusteeze.kernels import numba_pair_dot as pd

    @numba.njit
    def sums(xq, w, isum):
        pd.pair_sums_1(xq, 0, 32, w, 1, isum[0:])
        pd.pair_sums_5(xq, 1, 0, w, 0, isum[1:])

    rng = np.random.default_rng(0)
    starts = [(0, 32, 1)] + [(row, 0, 0) for row in range(1, 6)]  # (row, column, tile) of each isum row
    for xdt, lo, hi in ((np.int16, -32767, 32768), (np.int8, -127, 128)):
        xq = rng.integers(lo, hi, (6, 64)).astype(xdt)
        int4, int8 = rng.integers(0, 256, (2, 32, 64)), rng.integers(-128, 128, (2, 64, 64))
        for w in (int4.astype(np.uint8), int8.astype(np.int8)):
            isum = np.zeros((6, 64), np.int32)
            sums(xq, w, isum)
            for r, (row, c, t) in enumerate(starts):
                if w.dtype == np.uint8:
                    v = w[t, c // 2 : c // 2 + 16].astype(np.int64)  # [16, 64]: columns c + 2p (low), c + 2p + 1 (high)
                    cols = np.stack([v & 15, v >> 4], 1).reshape(32, 64)
                else:
                    cols = w[t, c : c + 32].astype(np.int64)
                expected = xq[row, c : c + 32].astype(np.int64) @ cols
                assert np.array_equal(isum[r], expected), (xdt, w.dtype, r)
    asm = "".join(sums.inspect_asm(s) for s in sums.signatures)
    assert re.search(sys.argv[1], asm) and "zmm" not in asm, "not the expected instructions"
    print("ok")
"""


@pytest.mark.parametrize("cpu", sorted(_TARGETS))
def test_pair_sums_compiled_for_avx2_and_for_plain_x86_64(cpu, tmp_path):
    features, instruction = _TARGETS[cpu]
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    code = textwrap.dedent(_TARGET_CHECK)
    result = subprocess.run([sys.executable, "-c", code, instruction], capture_output=True, text=True, env=env,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


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
