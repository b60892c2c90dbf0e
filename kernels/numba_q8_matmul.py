"""Numba CPU kernels for quantized matmul with integer activations: integer dot products, as llama.cpp's q8 path.

The weights are :mod:`numba_quant_matmul`'s row tiles (int4 ``w [N/R, K/2, R]``
uint8 or int8 ``w [N/R, K, R]``, group scales/mins ``[N/R, K/G, R]``). The
activations ``x [M, K]`` float32 are quantized once per call, per block of
``B`` values (``B = 32`` when it divides the weight's group size ``G``, else
``B = G``), to int16 (``bits=16``, ``d = max|x| / 32767``) or int8 (``bits=8``,
``d = max|x| / 127``, llama.cpp's ``q8`` blocks), one float32 scale per block,
round half to even:

    xq [M, K] int16 | int8, xd [M, K/B] float32 (d), xs [M, K/B] float32 (d · Σ xq)

Per weight group and activation block, the 64 lanes of a tile (one per output
row) accumulate ``Σ q_w · q_x`` in int32 (int4 × int16 ≤ 491 505 and int8 ×
int16 ≤ 4 161 409 per product: blocks of at most ``INT16_MAX_BLOCK`` values keep
the sum inside int32), then the block adds ``d · sum`` in float32, and the group
adds ``scale · part + min · Σ xs`` (the asymmetric min folds out of the inner
loop: it only needs the block sums of x). The inner loop runs across the R = 64
rows of a tile on integer vectors; LLVM turns the int4 pair ``lo·x0 + hi·x1``
into 16-bit dot products (``vpdpwssd`` with AVX512-VNNI, ``vpmaddwd`` on AVX2),
and the int8 kernel walks column pairs to get the same — so int16 activations
cost about what int8 ones do.

Why int16 is the default (``dtype="auto"``): with int8 activations SmolLM2
Q4_1 answers "What is the capital of France?" with "L'Étoile, la Marseillaise,
…" — and so does llama.cpp's own ``llama-simple`` on the same GGUF (its Q8_1
activations, same tokens) — while float32 answers "… Paris."; int16 activations
answer as float32 does (a torch simulation of either rounding gives the same
answers, so the kernels are not at fault). Measured on SmolLM2's shapes
(AVX-512 EPYC, 1 thread, one row): int4 3072×576 float32 kernel ~210 µs, int8
activations 83 µs, int16 96 µs (1.13-1.15× int8 at 1-8 rows).

Every output row is computed in a fixed order that does not depend on the
batch size or the other rows (each row's activations are quantized on their
own): batch invariant bit for bit; the serial and parallel drivers run the same
tile code, so they agree bit for bit as well. This changes the math (x is
rounded to 16 bits, relative error ~2e-5 per block maximum): it is used only under
``dtype="auto"`` (see :mod:`rusteeze.quant.cpu_matmul`); ``dtype="float32"``
keeps the float32-activation kernels.
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels.numba_checks import JIT
from rusteeze.kernels.numba_quant_matmul import PARALLEL_MIN_MACS, TILE

ACT_BLOCK = 32  # activation values per int8 scale, where it divides the weight's group size
INT16_MAX_BLOCK = 512  # int16 activations × int8 weights: 512 · 127 · 32767 < 2^31, no int32 overflow
ACT_BITS = (8, 16)  # activation widths the kernels take


@numba.njit(**JIT)
def act_block(group_size):
    """The activation block B for a weight group size G: 32 when it divides G, else G itself."""
    return ACT_BLOCK if group_size % ACT_BLOCK == 0 else group_size


@numba.njit(**JIT)
def quantize_rows(x, block, qmax, xq, xd, xs):  # pragma: no cover - compiled
    """x [M, K] float32 → xq [M, K] int8 (qmax 127) or int16 (qmax 32767), xd / xs [M, K/block] float32.

    Per block: d = max|x| / qmax, xq = round(x / d) (half to even), xs = d · Σ xq.
    """
    for m in range(x.shape[0]):
        for b in range(x.shape[1] // block):
            lo = b * block
            amax = np.float32(0)
            for c in range(lo, lo + block):
                amax = max(amax, abs(x[m, c]))
            d = amax / qmax
            inv = np.float32(1) / d if amax > 0 else np.float32(0)
            total = np.int32(0)
            for c in range(lo, lo + block):
                q = np.int32(np.rint(x[m, c] * inv))
                xq[m, c] = q
                total += q
            xd[m, b] = d
            xs[m, b] = d * np.float32(total)


@numba.njit(**JIT)
def _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t):  # pragma: no cover - compiled
    # One tile t: xq [M, K] i16 or i8, xd/xs [M, K/B] f32, w [NT, K/2, R] u8, scales/mins [NT, K/G, R] f32
    m_count = xq.shape[0]
    r = w.shape[2]
    groups = scales.shape[1]
    blocks = xd.shape[1] // groups  # activation blocks per weight group
    half = w.shape[1] // xd.shape[1]  # weight bytes per row per activation block: B / 2
    acc = np.zeros((m_count, r), np.float32)
    part = np.empty(r, np.float32)
    isum = np.empty(r, np.int32)
    for g in range(groups):
        for m in range(m_count):
            part[:] = np.float32(0)
            xsum = np.float32(0)
            for b in range(g * blocks, (g + 1) * blocks):
                isum[:] = np.int32(0)
                for j in range(b * half, (b + 1) * half):
                    x0 = np.int32(xq[m, 2 * j])
                    x1 = np.int32(xq[m, 2 * j + 1])
                    for i in range(r):
                        v = np.int32(w[t, j, i])
                        isum[i] += (v & 15) * x0 + (v >> 4) * x1
                d = xd[m, b]
                xsum += xs[m, b]
                for i in range(r):
                    part[i] += np.float32(isum[i]) * d
            for i in range(r):
                acc[m, i] += part[i] * scales[t, g, i] + mins[t, g, i] * xsum
    for m in range(m_count):
        for i in range(r):
            out[m, t * r + i] = acc[m, i]


@numba.njit(**JIT)
def _int8_q8_tile(xq, xd, w, scales, out, t):  # pragma: no cover - compiled
    # One tile t: xq [M, K] i16 or i8, xd [M, K/B] f32, w [NT, K, R] i8, scales [NT, K/G, R] f32
    m_count = xq.shape[0]
    r = w.shape[2]
    groups = scales.shape[1]
    blocks = xd.shape[1] // groups
    size = w.shape[1] // xd.shape[1]  # B
    acc = np.zeros((m_count, r), np.float32)
    part = np.empty(r, np.float32)
    isum = np.empty(r, np.int32)
    for g in range(groups):
        for m in range(m_count):
            part[:] = np.float32(0)
            for b in range(g * blocks, (g + 1) * blocks):
                isum[:] = np.int32(0)
                lo = b * size
                for c in range(lo, lo + size - 1, 2):  # column pairs: LLVM fuses them into 16-bit dot products
                    x0 = np.int32(xq[m, c])
                    x1 = np.int32(xq[m, c + 1])
                    for i in range(r):
                        isum[i] += np.int32(w[t, c, i]) * x0 + np.int32(w[t, c + 1, i]) * x1
                if size % 2:
                    c = lo + size - 1
                    x0 = np.int32(xq[m, c])
                    for i in range(r):
                        isum[i] += np.int32(w[t, c, i]) * x0
                d = xd[m, b]
                for i in range(r):
                    part[i] += np.float32(isum[i]) * d
            for i in range(r):
                acc[m, i] += part[i] * scales[t, g, i]
    for m in range(m_count):
        for i in range(r):
            out[m, t * r + i] = acc[m, i]


# Each product exists twice: tiles in one thread, or spread over Numba's threads (same tile code: bit-identical).
@numba.njit(**JIT)
def int4_q8_serial(xq, xd, xs, w, scales, mins, out):  # pragma: no cover - compiled
    """All tiles of an int4 product in the calling thread; out [M, NT * R] float32."""
    for t in range(w.shape[0]):
        _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t)


@numba.njit(parallel=True, **JIT)
def int4_q8_parallel(xq, xd, xs, w, scales, mins, out):  # pragma: no cover - compiled
    """The tiles of an int4 product spread over Numba's threads; out [M, NT * R] float32."""
    for t in numba.prange(w.shape[0]):
        _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t)


@numba.njit(**JIT)
def int8_q8_serial(xq, xd, w, scales, out):  # pragma: no cover - compiled
    """All tiles of an int8 product in the calling thread; out [M, NT * R] float32."""
    for t in range(w.shape[0]):
        _int8_q8_tile(xq, xd, w, scales, out, t)


@numba.njit(parallel=True, **JIT)
def int8_q8_parallel(xq, xd, w, scales, out):  # pragma: no cover - compiled
    """The tiles of an int8 product spread over Numba's threads; out [M, NT * R] float32."""
    for t in numba.prange(w.shape[0]):
        _int8_q8_tile(xq, xd, w, scales, out, t)


def _quantized(x: torch.Tensor, w: torch.Tensor, k: int, n: int, group: int, bits: int) -> tuple:
    if bits not in ACT_BITS:
        raise KernelError(f"quantized activations are int8 or int16, got bits={bits}")
    if bits == 16 and act_block(group) > INT16_MAX_BLOCK:
        raise KernelError(f"int16 activations need blocks of at most {INT16_MAX_BLOCK} values (int32 sums)")
    if x.dim() != 2 or x.shape[1] != k:
        raise KernelError(f"quantized matmul: x must be [T, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise KernelError("the Numba quantized matmul runs on CPU tensors only")
    if n > w.shape[0] * TILE:
        raise KernelError(f"quantized matmul: {n} output rows exceed the {w.shape[0] * TILE} held by the weight")
    xs = x.detach().float().contiguous().numpy()
    block = ACT_BLOCK if group % ACT_BLOCK == 0 else group
    xq = np.empty(xs.shape, np.int8 if bits == 8 else np.int16)
    xd = np.empty((xs.shape[0], k // block), np.float32)
    xsum = np.empty_like(xd)
    quantize_rows(xs, block, np.float32(127 if bits == 8 else 32767), xq, xd, xsum)
    return xq, xd, xsum


def int4_matmul_q8(
    x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, n: int, bits: int = 16
) -> torch.Tensor:
    """x [T, K] → [T, N] float32: ``q(x) @ W.T``, W held by ``numba_quant_matmul.repack_int4``'s tiles.

    ``bits``: x quantized to int16 (default; near float32) or int8 (llama.cpp's q8) per block.

    Raises:
        KernelError: wrong shapes, devices or bits.
    """
    k = w.shape[1] * 2
    xq, xd, xs = _quantized(x, w, k, n, k // scales.shape[1], bits)
    out = np.empty((xq.shape[0], w.shape[0] * TILE), np.float32)
    kernel = int4_q8_parallel if xq.shape[0] * n * k >= PARALLEL_MIN_MACS else int4_q8_serial
    kernel(xq, xd, xs, w.numpy(), scales.numpy(), mins.numpy(), out)
    return torch.from_numpy(out)[:, :n]


def int8_matmul_q8(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, n: int, bits: int = 16) -> torch.Tensor:
    """x [T, K] → [T, N] float32: ``q(x) @ W.T``, W held by ``numba_quant_matmul.repack_int8``'s tiles.

    ``bits``: x quantized to int16 (default; near float32) or int8 (llama.cpp's q8) per block;
    int8 × int16 products still pair into 16-bit dot products.

    Raises:
        KernelError: wrong shapes, devices or bits.
    """
    k = w.shape[1]
    xq, xd, _ = _quantized(x, w, k, n, k // scales.shape[1], bits)
    out = np.empty((xq.shape[0], w.shape[0] * TILE), np.float32)
    kernel = int8_q8_parallel if xq.shape[0] * n * k >= PARALLEL_MIN_MACS else int8_q8_serial
    kernel(xq, xd, w.numpy(), scales.numpy(), out)
    return torch.from_numpy(out)[:, :n]
