"""The CPU path of the quantized layers: Numba kernels on our own row-tiled layout, float32 math.

Weights are repacked once, after loading, into the tiles of
``rusteeze.kernels.numba_quant_matmul`` (a layout we own, the same on every
CPU). A call with up to ``NUMBA_MAX_TOKENS`` rows (decode, small batches) runs
the Numba kernel, which reads the packed weight in place; larger batches
(prefill) dequantize the layer to float32 with a Numba kernel and use torch's
GEMM, which is faster there (SmolLM2 gate_up 3072×576, AVX-512, 2 threads:
4 rows 0.40 ms in the kernel; 64 rows 6.7 ms in the kernel against 3.0 ms
dequantize + GEMM; ``benches/quant_kernels.py``).

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
the GEMM is float32.
"""

import functools
from dataclasses import dataclass

import torch

from rusteeze.bench.machine import cpu_flags
from rusteeze.kernels import numba_q8_matmul as q8
from rusteeze.kernels import numba_quant_matmul as nq

NUMBA_MAX_TOKENS = 8  # from 9 rows, dequantize + torch GEMM is faster
# The logits layer with int16 activations keeps the integer kernel up to here: dequantizing a
# 49152×576 vocabulary writes 113 MB per call (SmolLM2, 1 thread, busy machine: 16 rows 74 ms in
# the kernel against 123 ms dequantize + GEMM; 64 rows 315 against 227).
LOGITS_MAX_TOKENS = 32


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so torch's bf16 GEMM beats float32."""
    return bool(cpu_flags()[1] & {"avx512_bf16", "amx_bf16"})


def _allowed_bits(bits: int, group_size: int) -> int:
    """``bits`` (0, 8 or 16) where a weight of this group size takes them: int16 sums need blocks <= 512 values."""
    if bits == 16 and q8.act_block(group_size) > q8.INT16_MAX_BLOCK:
        return 0
    return bits


def _gemm(x: torch.Tensor, w_t: torch.Tensor, bf16: bool) -> torch.Tensor:
    """x [T, K] @ w_t [K, N] → [T, N] float32, in bfloat16 when ``bf16``."""
    if bf16:
        return (x.bfloat16() @ w_t.bfloat16()).float()
    return x.float() @ w_t


@dataclass
class TiledInt4:
    """An int4 group-wise weight ``W = q · scale + min`` in the Numba tiles (see :func:`nq.repack_int4`)."""

    weight: torch.Tensor  # [N/R, K/2, R] uint8
    scales: torch.Tensor  # [N/R, K/G, R] float32
    mins: torch.Tensor  # [N/R, K/G, R] float32
    out_features: int  # N
    activation_bits: int = 0  # kernel-sized calls quantize x to int16 (16; dtype "auto") or keep float32 (0)
    bf16_gemm: bool = False  # larger calls run a bfloat16 GEMM (dtype "auto", native bf16)
    kernel_max_tokens: int = NUMBA_MAX_TOKENS  # calls up to this many rows run the Numba kernel

    @classmethod
    def from_packed(
        cls,
        packed: torch.Tensor,
        scales: torch.Tensor,
        mins: torch.Tensor,
        activation_bits: int = 0,
        bf16_gemm: bool = False,
    ) -> "TiledInt4":
        """packed [N, K/2] uint8, scales/mins [N, K/G] → tiles (integer activations only where blocks allow)."""
        bits = _allowed_bits(activation_bits, packed.shape[1] * 2 // scales.shape[1])
        return cls(*nq.repack_int4(packed, scales, mins), packed.shape[0], bits, bf16_gemm)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] → [T, N] float32."""
        if x.shape[0] <= self.kernel_max_tokens:
            if self.activation_bits:
                return q8.int4_matmul_q8(
                    x, self.weight, self.scales, self.mins, self.out_features, self.activation_bits
                )
            return nq.int4_matmul(x, self.weight, self.scales, self.mins, self.out_features)
        return _gemm(x, nq.dequantize_int4_t(self.weight, self.scales, self.mins, self.out_features), self.bf16_gemm)


@dataclass
class TiledInt8:
    """An int8 weight ``W = q · scale`` (one scale per row or per group) in the Numba tiles."""

    weight: torch.Tensor  # [N/R, K, R] int8
    scales: torch.Tensor  # [N/R, K/G, R] float32 (G = K: per row)
    out_features: int  # N
    activation_bits: int = 0  # kernel-sized calls quantize x to int16 (16; dtype "auto") or keep float32 (0)
    bf16_gemm: bool = False  # larger calls run a bfloat16 GEMM (dtype "auto", native bf16)
    kernel_max_tokens: int = NUMBA_MAX_TOKENS  # calls up to this many rows run the Numba kernel

    @classmethod
    def from_int8(
        cls, q: torch.Tensor, scales: torch.Tensor, activation_bits: int = 0, bf16_gemm: bool = False
    ) -> "TiledInt8":
        """q [N, K] int8, scales [N] or [N, K/G] → tiles (integer activations only where blocks allow)."""
        groups = 1 if scales.dim() == 1 else scales.shape[1]
        bits = _allowed_bits(activation_bits, q.shape[1] // groups)
        return cls(*nq.repack_int8(q, scales), q.shape[0], bits, bf16_gemm)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] → [T, N] float32."""
        if x.shape[0] <= self.kernel_max_tokens:
            if self.activation_bits:
                return q8.int8_matmul_q8(x, self.weight, self.scales, self.out_features, self.activation_bits)
            return nq.int8_matmul(x, self.weight, self.scales, self.out_features)
        return _gemm(x, nq.dequantize_int8_t(self.weight, self.scales, self.out_features), self.bf16_gemm)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] → the weight's rows [T, K] float32 (an embedding lookup)."""
        return nq.int8_rows(self.weight, self.scales, ids)
