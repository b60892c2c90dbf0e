"""The CPU path of the quantized layers: Numba kernels on our own row-tiled layout, float32 math.

Weights are repacked once, after loading, into the tiles of
``rusteeze.kernels.numba_quant_matmul`` (a layout we own, the same on every
CPU; scales and mins float16, as GGUF blocks hold them). A call with up to
``NUMBA_MAX_TOKENS`` rows (decode, batches of up to 64 sequences) runs the
Numba kernel, which reads the packed weight in place (with float32 activations,
up to ``FLOAT_KERNEL_MAX_TOKENS``); larger batches (prefill) dequantize the
layer with a Numba kernel and use torch's GEMM, which is faster there (the
crossover: ``benches/quant_kernels.py``).

Activations: with ``activation_bits=16`` (set for ``dtype="auto"``, the default)
the kernel-sized calls quantize x to int16 per block of 32 and use integer dot
products (``rusteeze.kernels.numba_q8_matmul``): ~2.2× the float32 kernel's int4
multiply-adds per second, answers as float32 does (int8 blocks, llama.cpp's
choice, are 13 % faster still but flip SmolLM2's answers, llama.cpp's included;
see that module). With ``activation_bits=0`` (``dtype="float32"``) every path
computes in float32, so ``dtype="float32"`` means float32 math here too.

Large calls: with ``bf16_gemm`` (dtype "auto" on a CPU with native bf16,
AVX512-BF16 or AMX: :func:`native_bf16`) the dequantized weight and x are
rounded to bfloat16 for torch's GEMM, ~2× the float32 GEMM's rate there
(SmolLM2 gate_up 3072×576 × 128 rows, 1 thread: 7.9 ms against 26 ms); elsewhere
(AVX2 machines, where torch's bf16 GEMM crawls) and under ``dtype="float32"``
the GEMM is float32. Either way the weight is dequantized up to ``GEMM_COLUMNS`` output
rows at a time, straight into the GEMM's dtype (bfloat16 rounded to nearest even in the
Numba kernel: one pass, half the bytes), into a per-thread buffer reused by every
call, and each chunk's GEMM reads it while it is still in cache (SmolLM2, a step of
64 rows through this path in every layer, 1 thread: decoder linears 132 -> ~110 ms,
logits 73 -> ~50 ms, ``benches/batch_step.py``; the 49152×576 logits layer alone,
float32 GEMM, 64 rows: 70 -> 48 ms on 1 thread, 56 -> 33 ms on 2).
"""

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rusteeze.bench.machine import cpu_flags
from rusteeze.kernels import numba_q8_matmul as q8
from rusteeze.kernels import numba_quant_matmul as nq

# Calls of up to this many rows run the integer-activation kernel (int16 activations, dtype "auto"), which
# reads each weight block once for 4-5 rows; larger calls dequantize + GEMM. SmolLM2's decoder shapes against
# dequantize + bf16 GEMM (AVX-512 EPYC, benches/quant_kernels.py): 2 threads, 64 rows 843 / 566 / 323 µs
# against 897 / 577 / 403 (3072×576, 576×1536, 960×576), 96 rows slower; 1 thread, 48 rows 1249 / 676 / 425
# against 1331 / 668 / 453, 64 rows within 6 % either way. Against a float32 GEMM (no native bf16) it wins by
# 1.5-1.7x at 64 rows; and int16 activations are near float32, bf16 is not.
NUMBA_MAX_TOKENS = 64
# float32 activations (dtype "float32") take numba_quant_matmul's float32 kernel, one row at a time:
# from 9 rows dequantize + float32 GEMM is faster.
FLOAT_KERNEL_MAX_TOKENS = 8
# The logits layer (int16 activations; its larger calls keep float32 GEMMs) keeps the integer kernel up to
# here: 49152×576, 1 thread, 128 rows 59.6 ms against 86.2 dequantize + GEMM, 512 rows 239 against 403
# (2 threads 122 against 207).
LOGITS_MAX_TOKENS = 512
# Larger calls dequantize at most this many output rows at a time into a reused per-thread buffer,
# then run one GEMM on them: the chunk is still in cache when the GEMM reads it, nothing is allocated,
# and the buffer stays small whatever the layer. Fewer, larger chunks mean fewer parallel regions
# (SmolLM2, a step of 64 rows through this path in every layer, 2 threads: 150 ms at 2048, 169-175 at
# 512, 167 unchunked; 1 thread the same at 512 and 2048; the logits layer's 113 MB float32 vocabulary
# gains most).
GEMM_COLUMNS = 2048
_SCRATCH = threading.local()


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so torch's bf16 GEMM beats float32."""
    return bool(cpu_flags()[1] & {"avx512_bf16", "amx_bf16"})


def _allowed_bits(bits: int, group_size: int) -> int:
    """``bits`` (0, 8 or 16) where a weight of this group size takes them: int16 sums need blocks <= 512 values."""
    if bits == 16 and q8.act_block(group_size) > q8.INT16_MAX_BLOCK:
        return 0
    return bits


def _scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's reused 1-D buffer of ``dtype``, at least ``numel`` long (grown when a call needs more)."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def _gemm(x: torch.Tensor, dequantize: Callable, k: int, n: int, tiles: int, bf16: bool) -> torch.Tensor:
    """x [T, K] @ W.T → [T, N] float32, W dequantized at most ``GEMM_COLUMNS`` output rows at a time.

    ``dequantize(a, b, out)`` writes tiles ``a .. b`` of W, transposed, into ``out`` [K, (b - a)·R]
    and returns its first ``min(N, b·R) - a·R`` columns. x is converted once; every chunk is one
    torch GEMM into its columns of the output, in bfloat16 when ``bf16``.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    xs = x.to(dtype)  # [T, K]
    out = torch.empty(x.shape[0], n, dtype=dtype)  # [T, N]
    chunks = -(-tiles * nq.TILE // GEMM_COLUMNS)  # as few as fit, equal in size (tiles 9, 8 per chunk: 5 + 4)
    step = -(-tiles // chunks)
    buf = _scratch(k * step * nq.TILE, dtype)
    for a in range(0, tiles, step):
        b = min(tiles, a + step)
        w_t = dequantize(a, b, buf[: k * (b - a) * nq.TILE].view(k, -1))  # [K, columns of this chunk]
        torch.mm(xs, w_t, out=out[:, a * nq.TILE : a * nq.TILE + w_t.shape[1]])
    return out.float()


@dataclass
class TiledInt4:
    """An int4 group-wise weight ``W = q · scale + min`` in the Numba tiles (see :func:`nq.repack_int4`)."""

    weight: torch.Tensor  # [N/R, K/2, R] uint8
    scales: torch.Tensor  # [N/R, K/G, R] float16
    mins: torch.Tensor  # [N/R, K/G, R] float16
    out_features: int  # N
    activation_bits: int = 0  # kernel-sized calls quantize x to int16 (16; dtype "auto") or keep float32 (0)
    bf16_gemm: bool = False  # larger calls run a bfloat16 GEMM (dtype "auto", native bf16)
    kernel_max_tokens: int = NUMBA_MAX_TOKENS  # calls up to this many rows run the Numba kernel (float32: <= 8)

    @classmethod
    def from_packed(
        cls,
        packed: torch.Tensor,
        scales: torch.Tensor,
        mins: torch.Tensor,
        activation_bits: int = 0,
        bf16_gemm: bool = False,
    ) -> "TiledInt4":
        """packed [N, K/2] uint8, scales/mins [N, K/G] → tiles (integer activations only where blocks allow).

        Scales and mins become float16 (exact for GGUF's and ``rusteeze quantize``'s; float32 ones rounded).

        Raises:
            KernelError: a scale or min outside float16's range (``nq.repack_int4``).
        """
        bits = _allowed_bits(activation_bits, packed.shape[1] * 2 // scales.shape[1])
        return cls(*nq.repack_int4(packed, scales, mins), packed.shape[0], bits, bf16_gemm)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] → [T, N] float32."""
        if x.shape[0] <= self.kernel_max_tokens and self.activation_bits:
            return q8.int4_matmul_q8(x, self.weight, self.scales, self.mins, self.out_features, self.activation_bits)
        if x.shape[0] <= min(self.kernel_max_tokens, FLOAT_KERNEL_MAX_TOKENS):
            return nq.int4_matmul(x, self.weight, self.scales, self.mins, self.out_features)
        w, s, mn, n = self.weight, self.scales, self.mins, self.out_features

        def dequantize(a: int, b: int, out: torch.Tensor) -> torch.Tensor:
            return nq.dequantize_int4_t(w[a:b], s[a:b], mn[a:b], min(n, b * nq.TILE) - a * nq.TILE, out)

        return _gemm(x, dequantize, w.shape[1] * 2, n, w.shape[0], self.bf16_gemm)


@dataclass
class TiledInt8:
    """An int8 weight ``W = q · scale`` (one scale per row or per group) in the Numba tiles."""

    weight: torch.Tensor  # [N/R, K, R] int8
    scales: torch.Tensor  # [N/R, K/G, R] float16 (G = K: per row)
    out_features: int  # N
    activation_bits: int = 0  # kernel-sized calls quantize x to int16 (16; dtype "auto") or keep float32 (0)
    bf16_gemm: bool = False  # larger calls run a bfloat16 GEMM (dtype "auto", native bf16)
    kernel_max_tokens: int = NUMBA_MAX_TOKENS  # calls up to this many rows run the Numba kernel (float32: <= 8)

    @classmethod
    def from_int8(
        cls, q: torch.Tensor, scales: torch.Tensor, activation_bits: int = 0, bf16_gemm: bool = False
    ) -> "TiledInt8":
        """q [N, K] int8, scales [N] or [N, K/G] → tiles (integer activations only where blocks allow).

        Scales become float16 (exact for GGUF's Q8_0 blocks; float32 ones rounded, relative error <= 2^-11).

        Raises:
            KernelError: a scale outside float16's range (``nq.repack_int8``).
        """
        groups = 1 if scales.dim() == 1 else scales.shape[1]
        bits = _allowed_bits(activation_bits, q.shape[1] // groups)
        return cls(*nq.repack_int8(q, scales), q.shape[0], bits, bf16_gemm)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] → [T, N] float32."""
        if x.shape[0] <= self.kernel_max_tokens and self.activation_bits:
            return q8.int8_matmul_q8(x, self.weight, self.scales, self.out_features, self.activation_bits)
        if x.shape[0] <= min(self.kernel_max_tokens, FLOAT_KERNEL_MAX_TOKENS):
            return nq.int8_matmul(x, self.weight, self.scales, self.out_features)
        w, s, n = self.weight, self.scales, self.out_features

        def dequantize(a: int, b: int, out: torch.Tensor) -> torch.Tensor:
            return nq.dequantize_int8_t(w[a:b], s[a:b], min(n, b * nq.TILE) - a * nq.TILE, out)

        return _gemm(x, dequantize, w.shape[1], n, w.shape[0], self.bf16_gemm)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] → the weight's rows [T, K] float32 (an embedding lookup)."""
        return nq.int8_rows(self.weight, self.scales, ids)
