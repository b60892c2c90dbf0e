"""Numba CPU kernels for quantized matmul with integer activations: integer dot products, as llama.cpp's q8 path.

The weights are :mod:`numba_quant_matmul`'s row tiles (int4 ``w [N/R, K/2, R]``
uint8 or int8 ``w [N/R, K, R]``, group scales/mins ``[N/R, K/G, R]`` float16,
taken as their uint16 bits and converted to float32 in registers where they are
applied, :func:`numba_half.half_value`). The
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
loop: it only needs the block sums of x). Rows go through a tile in blocks of
4 (5 where a lone row would be left over): for blocks of 32 values,
:mod:`numba_pair_dot` loads and unpacks each weight vector once for all the
block's rows, keeps their 64 lane sums in
registers and multiplies a column pair per instruction (``vpmaddwd``;
``vpdpwssd`` with AVX512-VNNI); other block sizes take a plain loop, one row at
a time. Integer sums are exact, and each row's float32 steps (per block, then
per group) run in the same order whatever the block it is in.

Against the former loop (every row re-reading and re-unpacking the weight;
git 3e64cec), µs per call with x's quantization, ``benches/quant_kernels.py
--threads 1 --baseline 3e64cec`` (AMD EPYC, avx2 avx512f avx512_vnni
avx512_bf16, 1 thread):

    rows M                 1     2     4     5     8    16     32     64
    3072×576 int4  now    76    91   127   150   225   435    845   1637
                   was   125   201   375   460   723  1417   2811   5701
    576×1536 int4  now    42    52    71    85   125   235    454    890
                   was    67   107   197   240   375   730   1442   2908
    960×576 int4   now    31    38    50    58    84   150    287    551
                   was    43    72   127   155   239   459    908   1814
    49152×576 int8 now  1274  1420  2094  2411  3784  7513  14742  29304
                   was  1763  3316  6279  7710 12347 24974  49636  99000

A row costs 1/3 of what it did from 4 rows on (26 µs on gate_up against 88);
one row 1.4-1.65× less. Against dequantize + GEMM the kernel now wins up to 64
rows on the decoder's shapes (bf16 GEMM, 2 threads; ties at 64 on 1 thread) and
up to 512 and beyond on the logits layer (float32 GEMM): the thresholds in
:mod:`rusteeze.quant.cpu_matmul`.

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
from rusteeze.kernels.numba_half import half_bits, half_value
from rusteeze.kernels.numba_pair_dot import TILE_JIT, block_rows, group_parts
from rusteeze.kernels.numba_quant_matmul import PARALLEL_MIN_MACS, TILE
from rusteeze.kernels.numba_stack import stack_pointer

ACT_BLOCK = 32  # activation values per int8 scale, where it divides the weight's group size
INT16_MAX_BLOCK = 512  # int16 activations × int8 weights: 512 · 127 · 32767 < 2^31, no int32 overflow
ACT_BITS = (8, 16)  # activation widths the kernels take
ROWS = 5  # the most activation rows per pass over a weight block (numba_pair_dot.block_rows)
_SCRATCH = ROWS * TILE  # elements of each per-tile working buffer (numba_stack: in the tile's stack frame)


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


@numba.njit(**TILE_JIT)
def _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t):  # pragma: no cover - compiled
    # One tile t: xq [M, K] i16 or i8, xd/xs [M, K/B] f32, w [NT, K/2, R] u8, scales/mins [NT, K/G, R] u16 (f16)
    groups = scales.shape[1]
    blocks = xd.shape[1] // groups  # activation blocks per weight group
    size = xq.shape[1] // xd.shape[1]  # B
    isum = numba.carray(stack_pointer(np.int32, _SCRATCH), (ROWS, TILE))  # on the stack: no allocation per tile
    part = numba.carray(stack_pointer(np.float32, _SCRATCH), (ROWS, TILE))  # Σ d_b · isum_b, blocks but the last
    acc = numba.carray(stack_pointer(np.float32, _SCRATCH), (ROWS, TILE))
    m = 0
    while m < xq.shape[0]:  # a block of rows: each row's order of operations is its own
        rows = block_rows(xq.shape[0] - m)
        acc[:] = np.float32(0)
        for g in range(groups):
            b0, last = g * blocks, (g + 1) * blocks - 1
            group_parts(xq, xd, m, rows, b0, blocks, size, w, t, True, isum, part)
            for r in range(rows):
                d = xd[m + r, last]
                xsum = xs[m + r, b0]  # d · Σ q over the group's blocks: the asymmetric min's share
                for b in range(b0 + 1, last + 1):
                    xsum += xs[m + r, b]
                for i in range(TILE):
                    p = np.float32(isum[r, i]) * d if blocks == 1 else part[r, i] + np.float32(isum[r, i]) * d
                    acc[r, i] = (acc[r, i] + p * half_value(scales[t, g, i])) + half_value(mins[t, g, i]) * xsum
        for r in range(rows):
            for i in range(TILE):
                out[m + r, t * TILE + i] = acc[r, i]
        m += rows


@numba.njit(**TILE_JIT)
def _int8_q8_tile(xq, xd, w, scales, out, t):  # pragma: no cover - compiled
    # One tile t: xq [M, K] i16 or i8, xd [M, K/B] f32, w [NT, K, R] i8, scales [NT, K/G, R] u16 (f16 bits)
    groups = scales.shape[1]
    blocks = xd.shape[1] // groups
    size = xq.shape[1] // xd.shape[1]  # B
    isum = numba.carray(stack_pointer(np.int32, _SCRATCH), (ROWS, TILE))
    part = numba.carray(stack_pointer(np.float32, _SCRATCH), (ROWS, TILE))
    acc = numba.carray(stack_pointer(np.float32, _SCRATCH), (ROWS, TILE))
    m = 0
    while m < xq.shape[0]:
        rows = block_rows(xq.shape[0] - m)
        acc[:] = np.float32(0)
        for g in range(groups):
            last = (g + 1) * blocks - 1
            group_parts(xq, xd, m, rows, g * blocks, blocks, size, w, t, False, isum, part)
            for r in range(rows):
                d = xd[m + r, last]
                for i in range(TILE):
                    p = np.float32(isum[r, i]) * d if blocks == 1 else part[r, i] + np.float32(isum[r, i]) * d
                    acc[r, i] += p * half_value(scales[t, g, i])
        for r in range(rows):
            for i in range(TILE):
                out[m + r, t * TILE + i] = acc[r, i]
        m += rows


# Each product exists twice: tiles in one thread, or spread over Numba's threads (same tile code: bit-identical).
@numba.njit(**TILE_JIT)
def int4_q8_serial(xq, xd, xs, w, scales, mins, out):  # pragma: no cover - compiled
    """All tiles of an int4 product in the calling thread; out [M, NT * R] float32."""
    for t in range(w.shape[0]):
        _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t)


@numba.njit(parallel=True, **TILE_JIT)
def int4_q8_parallel(xq, xd, xs, w, scales, mins, out):  # pragma: no cover - compiled
    """The tiles of an int4 product spread over Numba's threads; out [M, NT * R] float32."""
    for t in numba.prange(w.shape[0]):
        _int4_q8_tile(xq, xd, xs, w, scales, mins, out, t)


@numba.njit(**TILE_JIT)
def int8_q8_serial(xq, xd, w, scales, out):  # pragma: no cover - compiled
    """All tiles of an int8 product in the calling thread; out [M, NT * R] float32."""
    for t in range(w.shape[0]):
        _int8_q8_tile(xq, xd, w, scales, out, t)


@numba.njit(parallel=True, **TILE_JIT)
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
    if w.dim() != 3 or w.shape[2] != TILE or not w.is_contiguous():
        raise KernelError(f"quantized matmul: the weight must be contiguous tiles [N/{TILE}, ., {TILE}]")
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
        KernelError: wrong shapes, devices or bits, or scales that are not float16.
    """
    k = w.shape[1] * 2
    xq, xd, xs = _quantized(x, w, k, n, k // scales.shape[1], bits)
    out = np.empty((xq.shape[0], w.shape[0] * TILE), np.float32)
    kernel = int4_q8_parallel if xq.shape[0] * n * k >= PARALLEL_MIN_MACS else int4_q8_serial
    kernel(xq, xd, xs, w.numpy(), half_bits(scales), half_bits(mins), out)
    return torch.from_numpy(out)[:, :n]


def int8_matmul_q8(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, n: int, bits: int = 16) -> torch.Tensor:
    """x [T, K] → [T, N] float32: ``q(x) @ W.T``, W held by ``numba_quant_matmul.repack_int8``'s tiles.

    ``bits``: x quantized to int16 (default; near float32) or int8 (llama.cpp's q8) per block;
    int8 × int16 products still pair into 16-bit dot products.

    Raises:
        KernelError: wrong shapes, devices or bits, or scales that are not float16.
    """
    k = w.shape[1]
    xq, xd, _ = _quantized(x, w, k, n, k // scales.shape[1], bits)
    out = np.empty((xq.shape[0], w.shape[0] * TILE), np.float32)
    kernel = int8_q8_parallel if xq.shape[0] * n * k >= PARALLEL_MIN_MACS else int8_q8_serial
    kernel(xq, xd, w.numpy(), half_bits(scales), out)
    return torch.from_numpy(out)[:, :n]
