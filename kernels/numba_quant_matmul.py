"""Numba CPU kernels for weight-only quantized matmul, reading our own row-tiled layout.

Weights are repacked once, at load, from the checkpoint layout (``packed [N, K/2]``
int4 or ``q [N, K]`` int8, group scales ``[N, K/G]``) into tiles of ``TILE``
output rows stored side by side for every K position:

* int4: ``w [N/R, K/2, R]`` uint8, byte ``[t, j, r]`` holds row ``tR + r`` of
  column ``2j`` in its low nibble and column ``2j + 1`` in its high nibble;
* int8: ``w [N/R, K, R]`` int8;
* ``scales`` / ``mins`` ``[N/R, K/G, R]`` float16 (int8 has no mins), handed to the
  kernels as their bits (uint16, :func:`numba_half.half_bits`).

N is padded with zero rows up to a multiple of R. The innermost loop runs across
the R rows of a tile, so it vectorizes with no horizontal reduction (R = 64:
four AVX-512 or eight AVX2 accumulators), and each group's weights (R × G/2
bytes) stay in L1 while every token of the batch reads them. The layout is ours
and fixed: it does not depend on the CPU (torch's int4pack layout does).

Scales and mins are float16 as in the files we load (GGUF Q4_0/Q4_1/Q8_0 blocks,
``rusteeze quantize`` output), so holding them so is exact there; a float32 source
(an in-memory quantization) is rounded to the nearest float16 (:func:`repack_int4`).
Each scale and min is converted to float32 in registers where it is applied
(``numba_half.half_value``: ``vcvtph2ps``, 16 per instruction, with F16C), and the
math is float32 throughout: per group, ``scale · Σ q·x + min · Σ x`` (the asymmetric
min folds out of the inner loop), bit for bit what float32 tiles holding the same
values compute. Each output row is computed in the same order whatever the batch
size or the other rows, so results are batch-invariant bit for bit. Traffic per
call: the packed weight once (N·K/2 bytes int4, N·K int8) plus 4·N·K/G bytes of
scales and mins (int4 at G = 32: 1/4 of the packed weight's bytes, was 1/2 with float32).
"""

import math

import numpy as np
import torch
from numba import njit, prange

from rusteeze.errors import KernelError
from rusteeze.kernels.numba_checks import JIT
from rusteeze.kernels.numba_half import half_bits, half_value

TILE = 64  # output rows per tile (R)
# Smaller products run in the calling thread: a parallel region costs a thread
# wake-up (µs on an idle machine, a scheduler time slice on a busy one), more
# than the work it would split (SmolLM2's 576×576 o_proj is 0.33 M MACs).
PARALLEL_MIN_MACS = 1 << 20
DEQUANT_STEP = 32  # columns per dequantize work item, at most (fewer where the group size is not a multiple)


@njit(fastmath=True, cache=True)
def _int4_tile(x, w, scales, mins, out, t):  # pragma: no cover - compiled
    # One tile t: x [M, K] f32, w [NT, K/2, R] u8, scales/mins [NT, K/G, R] u16 (f16 bits) → out[:, tR:(t+1)R]
    m_count = x.shape[0]
    r = w.shape[2]
    groups = scales.shape[1]
    half = w.shape[1] // groups  # bytes per row per group: G / 2
    acc = np.zeros((m_count, r), np.float32)
    part = np.empty(r, np.float32)
    for g in range(groups):
        for m in range(m_count):
            part[:] = np.float32(0)
            xsum = np.float32(0)
            for j in range(g * half, (g + 1) * half):
                x0 = x[m, 2 * j]
                x1 = x[m, 2 * j + 1]
                xsum += x0 + x1
                for i in range(r):
                    b = w[t, j, i]
                    part[i] += np.float32(b & 15) * x0 + np.float32(b >> 4) * x1
            for i in range(r):
                acc[m, i] += part[i] * half_value(scales[t, g, i]) + half_value(mins[t, g, i]) * xsum
    for m in range(m_count):
        for i in range(r):
            out[m, t * r + i] = acc[m, i]


@njit(fastmath=True, cache=True)
def _int8_tile(x, w, scales, out, t):  # pragma: no cover - compiled
    # One tile t: x [M, K] f32, w [NT, K, R] i8, scales [NT, K/G, R] u16 (f16 bits) → out[:, tR:(t+1)R]
    m_count = x.shape[0]
    k, r = w.shape[1], w.shape[2]
    groups = scales.shape[1]
    size = k // groups
    acc = np.zeros((m_count, r), np.float32)
    part = np.empty(r, np.float32)
    for g in range(groups):
        for m in range(m_count):
            part[:] = np.float32(0)
            for c in range(g * size, (g + 1) * size):
                xv = x[m, c]
                for i in range(r):
                    part[i] += np.float32(w[t, c, i]) * xv
            for i in range(r):
                acc[m, i] += part[i] * half_value(scales[t, g, i])
    for m in range(m_count):
        for i in range(r):
            out[m, t * r + i] = acc[m, i]


# Each product exists twice: tiles in one thread, or spread over Numba's threads.
# Both run the same tile code, so their results are bit-identical.
@njit(fastmath=True, cache=True)
def _int4_serial(x, w, scales, mins, out):  # pragma: no cover - compiled
    for t in range(w.shape[0]):
        _int4_tile(x, w, scales, mins, out, t)


@njit(parallel=True, fastmath=True, cache=True)
def _int4_parallel(x, w, scales, mins, out):  # pragma: no cover - compiled
    for t in prange(w.shape[0]):
        _int4_tile(x, w, scales, mins, out, t)


@njit(fastmath=True, cache=True)
def _int8_serial(x, w, scales, out):  # pragma: no cover - compiled
    for t in range(w.shape[0]):
        _int8_tile(x, w, scales, out, t)


@njit(parallel=True, fastmath=True, cache=True)
def _int8_parallel(x, w, scales, out):  # pragma: no cover - compiled
    for t in prange(w.shape[0]):
        _int8_tile(x, w, scales, out, t)


# Dequantization writes W transposed, [K, NT * R]: row c holds column c of every output row, so a
# tile's R rows land side by side (contiguous stores) and torch's GEMM reads it as the [K, N] operand.
# Float32, or bfloat16 bits (uint16): the float32 value rounded to nearest even, as Tensor.bfloat16()
# rounds it, in one pass (half the bytes written, no separate conversion pass). Work items are runs of
# ``step`` columns inside one group (int4: bytes, 2 columns each): the group's scales and mins of every
# tile are converted to float32 once per run, into a buffer [NT, R], not once per column.
@njit(inline="always", **JIT)
def _bf16_bits(u):  # pragma: no cover - compiled
    # The bits u (uint32) of a float32 → its bfloat16 bits (uint16), rounded to nearest even; NaN stays NaN
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(inline="always", **JIT)
def _group_floats(src, g, dst):  # pragma: no cover - compiled
    # dst [NT, R] f32 = the float16 bits src[:, g, :] as float32: group g's values of every tile
    for t in range(dst.shape[0]):
        for i in range(dst.shape[1]):
            dst[t, i] = half_value(src[t, g, i])


@njit(parallel=True, fastmath=True, cache=True)
def _int4_dequant_kernel(w, scales, mins, step, out):  # pragma: no cover - compiled
    # w [NT, K/2, R] u8, scales/mins [NT, K/G, R] u16 (f16 bits) → out [K, NT * R] f32 (W transposed)
    nt, half_k, r = w.shape
    half = half_k // scales.shape[1]
    for b in prange(half_k // step):
        s = np.empty((nt, r), np.float32)
        mn = np.empty((nt, r), np.float32)
        _group_floats(scales, b * step // half, s)
        _group_floats(mins, b * step // half, mn)
        for j in range(b * step, (b + 1) * step):
            for t in range(nt):
                for i in range(r):
                    v = w[t, j, i]
                    out[2 * j, t * r + i] = np.float32(v & 15) * s[t, i] + mn[t, i]
                    out[2 * j + 1, t * r + i] = np.float32(v >> 4) * s[t, i] + mn[t, i]


@njit(parallel=True, **JIT)
def _int4_dequant_bf16_kernel(w, scales, mins, step, out):  # pragma: no cover - compiled
    # w [NT, K/2, R] u8, scales/mins [NT, K/G, R] u16 (f16 bits) → out [K, NT * R] u16: bfloat16 bits of W transposed
    nt, half_k, r = w.shape
    half = half_k // scales.shape[1]
    for b in prange(half_k // step):
        s = np.empty((nt, r), np.float32)
        mn = np.empty((nt, r), np.float32)
        _group_floats(scales, b * step // half, s)
        _group_floats(mins, b * step // half, mn)
        f = np.empty(r, np.float32)  # one tile's values of column 2j (then 2j + 1), as float32
        u = f.view(np.uint32)
        for j in range(b * step, (b + 1) * step):
            for t in range(nt):
                for i in range(r):
                    f[i] = np.float32(w[t, j, i] & 15) * s[t, i] + mn[t, i]
                row = out[2 * j, t * r : (t + 1) * r]
                for i in range(r):
                    row[i] = _bf16_bits(u[i])
                for i in range(r):
                    f[i] = np.float32(w[t, j, i] >> 4) * s[t, i] + mn[t, i]
                row = out[2 * j + 1, t * r : (t + 1) * r]
                for i in range(r):
                    row[i] = _bf16_bits(u[i])


@njit(parallel=True, fastmath=True, cache=True)
def _int8_dequant_kernel(w, scales, step, out):  # pragma: no cover - compiled
    # w [NT, K, R] i8, scales [NT, K/G, R] u16 (f16 bits) → out [K, NT * R] f32 (W transposed)
    nt, k, r = w.shape
    size = k // scales.shape[1]
    for b in prange(k // step):
        s = np.empty((nt, r), np.float32)
        _group_floats(scales, b * step // size, s)
        for c in range(b * step, (b + 1) * step):
            for t in range(nt):
                for i in range(r):
                    out[c, t * r + i] = np.float32(w[t, c, i]) * s[t, i]


@njit(parallel=True, **JIT)
def _int8_dequant_bf16_kernel(w, scales, step, out):  # pragma: no cover - compiled
    # w [NT, K, R] i8, scales [NT, K/G, R] u16 (f16 bits) → out [K, NT * R] u16: bfloat16 bits of W transposed
    nt, k, r = w.shape
    size = k // scales.shape[1]
    for b in prange(k // step):
        s = np.empty((nt, r), np.float32)
        _group_floats(scales, b * step // size, s)
        f = np.empty(r, np.float32)
        u = f.view(np.uint32)
        for c in range(b * step, (b + 1) * step):
            for t in range(nt):
                for i in range(r):
                    f[i] = np.float32(w[t, c, i]) * s[t, i]
                row = out[c, t * r : (t + 1) * r]
                for i in range(r):
                    row[i] = _bf16_bits(u[i])


def _tiles(a: torch.Tensor, n: int) -> torch.Tensor:
    """[N, C] → [ceil(N/R), C, R] contiguous, zero rows padding N to a multiple of R."""
    pad = -n % TILE
    if pad:
        a = torch.cat((a, a.new_zeros(pad, a.shape[1])))
    return a.view(-1, TILE, a.shape[1]).transpose(1, 2).contiguous()


def _float16(values: torch.Tensor, what: str) -> torch.Tensor:
    """values [N, C] → float16 [N, C]: exact for values float16 holds (GGUF's, ``rusteeze quantize``'s), else
    rounded to the nearest float16, as llama.cpp's formats hold every scale.

    Each value then differs by at most 2^-11 of the largest |value| (a quarter of bfloat16's step) as long as
    that largest one is a normal float16 (>= 2^-14): below that, float16 keeps absolute steps of 2^-24, and
    smaller values (an all-zero row's scale, ~1e-14 from ``quantize_int8``) become 0 within the same bound.

    Raises:
        KernelError: a finite value that float16 turns into ±inf (|v| > 65504), or one it turns into 0 while
            every value is below 2^-14 (the whole tensor would lose its precision).
    """
    src = values.float()
    half = src.to(torch.float16)
    back = half.float()
    if bool(((back == src) | src.isnan()).all()):
        return half
    largest = float(src.abs().nan_to_num(0.0, posinf=0.0).amax())
    bad = (back.isinf() & src.isfinite()) | ((back == 0) & (src != 0) & (largest < 2.0**-14))
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise KernelError(
            f"the Numba weight tiles hold scales and mins as float16, but {what}[{r}, {c}] = {float(src[r, c]):g} "
            f"would become {float(back[r, c]):g} (float16: |x| <= 65504, normal from 6.1e-5); run this model "
            'with kernel_backend="torch" (float32 scales), or rescale the layer\'s weights into that range'
        )
    return half


def repack_int4(
    packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed [N, K/2] uint8, scales/mins [N, K/G]) → tiled (w [NT, K/2, R], scales, mins [NT, K/G, R] float16).

    Raises:
        KernelError: a scale or min that float16 cannot hold (see :func:`_float16`).
    """
    n = packed.shape[0]
    return _tiles(packed, n), _tiles(_float16(scales, "scales"), n), _tiles(_float16(mins, "mins"), n)


def repack_int8(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, K] int8, scales [N] or [N, K/G]) → tiled (w [NT, K, R] int8, scales [NT, K/G, R] float16).

    Raises:
        KernelError: a scale that float16 cannot hold (see :func:`_float16`).
    """
    n = q.shape[0]
    per_group = scales.reshape(n, -1)  # [N, K/G]; G = K for one scale per row
    return _tiles(q, n), _tiles(_float16(per_group, "scales"), n)


def _check(x: torch.Tensor, w: torch.Tensor, k: int, n: int) -> np.ndarray:
    if x.dim() != 2 or x.shape[1] != k:
        raise KernelError(f"quantized matmul: x must be [T, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise KernelError("the Numba quantized matmul runs on CPU tensors only")
    if n > w.shape[0] * TILE:
        raise KernelError(f"quantized matmul: {n} output rows exceed the {w.shape[0] * TILE} held by the weight")
    return x.detach().float().contiguous().numpy()


def int4_matmul(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, n: int) -> torch.Tensor:
    """x [T, K] → [T, N] float32: ``x @ W.T`` with W held by :func:`repack_int4`'s tiles.

    Raises:
        KernelError: wrong shapes or devices, or scales that are not float16.
    """
    xs = _check(x, w, w.shape[1] * 2, n)
    out = np.empty((xs.shape[0], w.shape[0] * TILE), np.float32)
    kernel = _int4_parallel if xs.shape[0] * n * xs.shape[1] >= PARALLEL_MIN_MACS else _int4_serial
    kernel(xs, w.numpy(), half_bits(scales), half_bits(mins), out)
    return torch.from_numpy(out)[:, :n]


def int8_matmul(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """x [T, K] → [T, N] float32: ``x @ W.T`` with W held by :func:`repack_int8`'s tiles.

    Raises:
        KernelError: wrong shapes or devices, or scales that are not float16.
    """
    xs = _check(x, w, w.shape[1], n)
    out = np.empty((xs.shape[0], w.shape[0] * TILE), np.float32)
    kernel = _int8_parallel if xs.shape[0] * n * xs.shape[1] >= PARALLEL_MIN_MACS else _int8_serial
    kernel(xs, w.numpy(), half_bits(scales), out)
    return torch.from_numpy(out)[:, :n]


def _dequant_out(out: torch.Tensor | None, k: int, cols: int) -> np.ndarray:
    """The numpy array a dequantize kernel writes: a new float32 [K, cols], or ``out``'s memory (uint16 for bf16)."""
    if out is None:
        return np.empty((k, cols), np.float32)
    if out.shape != (k, cols) or out.dtype not in (torch.float32, torch.bfloat16) or not out.is_contiguous():
        raise KernelError(
            f"dequantize: out must be a contiguous float32 or bfloat16 [{k}, {cols}] tensor, "
            f"got {out.dtype} {tuple(out.shape)}"
        )
    return out.view(torch.uint16).numpy() if out.dtype is torch.bfloat16 else out.numpy()


def dequantize_int4_t(
    w: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, n: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The weight held by :func:`repack_int4`'s tiles, transposed: [K, n] (a strided view of [K, NT·R]).

    Any run of tiles works (``w[a:b]``, ``scales[a:b]``, ``mins[a:b]``: rows ``aR .. bR``). Float32 in a
    new array, or written into ``out`` (contiguous [K, NT·R], float32 or bfloat16; bfloat16 is the
    float32 value rounded to nearest even, bit for bit what ``Tensor.bfloat16()`` makes of it).

    Raises:
        KernelError: ``out`` of the wrong shape, dtype or layout, or scales that are not float16.
    """
    dst = _dequant_out(out, w.shape[1] * 2, w.shape[0] * TILE)
    kernel = _int4_dequant_bf16_kernel if dst.dtype == np.uint16 else _int4_dequant_kernel
    kernel(
        w.numpy(), half_bits(scales), half_bits(mins), math.gcd(w.shape[1] // scales.shape[1], DEQUANT_STEP // 2), dst
    )
    return (torch.from_numpy(dst) if out is None else out)[:, :n]


def dequantize_int8_t(w: torch.Tensor, scales: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The weight held by :func:`repack_int8`'s tiles, transposed: [K, n] (a strided view of [K, NT·R]).

    Tile runs and ``out`` as in :func:`dequantize_int4_t`.

    Raises:
        KernelError: ``out`` of the wrong shape, dtype or layout, or scales that are not float16.
    """
    dst = _dequant_out(out, w.shape[1], w.shape[0] * TILE)
    kernel = _int8_dequant_bf16_kernel if dst.dtype == np.uint16 else _int8_dequant_kernel
    kernel(w.numpy(), half_bits(scales), math.gcd(w.shape[1] // scales.shape[1], DEQUANT_STEP), dst)
    return (torch.from_numpy(dst) if out is None else out)[:, :n]


def int8_rows(w: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` [T] of the float32 weight held by :func:`repack_int8`'s tiles → [T, K] (embedding lookup)."""
    t, r = ids // TILE, ids % TILE
    q = w[t, :, r].float()  # [T, K]
    s = scales[t, :, r].float()  # [T, K/G]
    return (q.view(len(ids), s.shape[1], -1) * s.unsqueeze(-1)).view(len(ids), -1)
