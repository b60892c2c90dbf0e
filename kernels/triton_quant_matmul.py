"""Weight-only quantized matmuls that dequantize in registers: int8 and int4.

Both compute ``out = x @ W.T`` with ``x: [M, K]`` activations and a quantized
``W: [N, K]``, tiled as ``BLOCK_M × BLOCK_N`` output tiles with a loop over
``K`` in ``BLOCK_K`` steps; weights are dequantized to x's dtype per tile and
fed to ``tl.dot`` with float32 accumulation.

* int8, per output channel: ``W = q · scale[n]``. The scale is applied once to
  the accumulator at the end.
* int4, group-wise asymmetric: ``W[n, k] = q · scales[n, k // G] + mins[n, k // G]``,
  two values per byte (``packed[n, j]`` holds ``q[n, 2j]`` in its low nibble and
  ``q[n, 2j + 1]`` in its high nibble). ``BLOCK_K`` divides ``G``, so each K step
  needs one scale and one min per output column.

Memory traffic (the point of weight-only quantization: decode is bound by
weight reads): int8 reads ``N·K`` bytes of weights, int4 ``N·K/2`` bytes plus
``2·N·K/G`` scale/min elements, against ``2·N·K`` for a bf16 weight; activations
``M·K`` and output ``M·N`` elements are re-read per tile column / written once.
"""

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_same_device, check_tensor

ACT_DTYPES = FLOAT_DTYPES


@triton.jit
def _int8_matmul_kernel(
    x_ptr,  # [M, K] activations (row stride stride_xm)
    w_ptr,  # [N, K] int8 weights (row stride stride_wn)
    scale_ptr,  # [N] per-output-channel scale
    out_ptr,  # [M, N] output in x's dtype (row stride stride_om)
    M,  # rows of x
    N,  # output features
    K,  # input features
    stride_xm,  # x: elements between rows
    stride_wn,  # w: elements between rows
    stride_om,  # out: elements between rows
    BLOCK_M: tl.constexpr,  # output rows per program
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # K step
    IEEE: tl.constexpr,  # fp32 activations: exact fp32 dots instead of tf32
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    rk = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + rn.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_cols + kk[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0)  # [BLOCK_K, BLOCK_N]
        w = w.to(x.dtype)  # int8 values are exact in fp16/bf16/fp32
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    scale = tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    out = acc * scale[None, :]
    tl.store(
        out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def _int4_matmul_kernel(
    x_ptr,  # [M, K] activations (row stride stride_xm)
    packed_ptr,  # [N, K // 2] uint8, low nibble = even column, high nibble = odd column
    scales_ptr,  # [N, K // GROUP] per-group scale
    mins_ptr,  # [N, K // GROUP] per-group offset (value of q == 0)
    out_ptr,  # [M, N] output in x's dtype (row stride stride_om)
    M,  # rows of x
    N,  # output features
    K,  # input features (a multiple of GROUP)
    stride_xm,  # x: elements between rows
    stride_pn,  # packed: bytes between rows
    stride_sn,  # scales: elements between rows
    stride_mn,  # mins: elements between rows
    stride_om,  # out: elements between rows
    GROUP: tl.constexpr,  # columns per quantization group
    BLOCK_M: tl.constexpr,  # output rows per program
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # K step; divides GROUP
    IEEE: tl.constexpr,  # fp32 activations: exact fp32 dots instead of tf32
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    rk = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    m_ok = rm < M
    n_ok = rn < N
    rn64 = rn.to(tl.int64)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    shift = ((rk % 2) * 4)[:, None]  # [BLOCK_K, 1]: even column → low nibble
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
        # Each byte is loaded for both of its columns; the second load hits in cache.
        byte = tl.load(packed_ptr + rn64[None, :] * stride_pn + (kk // 2)[:, None], mask=n_ok[None, :], other=0)
        q = (byte.to(tl.int32) >> shift) & 0xF  # [BLOCK_K, BLOCK_N]
        group = k0 // GROUP
        scale = tl.load(scales_ptr + rn64 * stride_sn + group, mask=n_ok, other=0.0).to(tl.float32)  # [BLOCK_N]
        low = tl.load(mins_ptr + rn64 * stride_mn + group, mask=n_ok, other=0.0).to(tl.float32)  # [BLOCK_N]
        w = (q.to(tl.float32) * scale[None, :] + low[None, :]).to(x.dtype)  # [BLOCK_K, BLOCK_N]
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    tl.store(
        out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


def _rows(op: str, x: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` activations as a ``[M, K]`` matrix with unit column stride."""
    check_tensor(op, "x", x, dtypes=ACT_DTYPES, unit_last_stride=False)
    if x.dim() < 1:
        raise KernelError(f"{op}: x must have at least one dimension")
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.shape[1] <= 1 or x2.stride(1) == 1 else x2.contiguous()


def _block_m(m: int) -> int:
    return min(64, max(16, triton.next_power_of_2(m)))


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (weight * scale[:, None]).T`` for int8 per-output-channel weights (Triton).

    Args:
        x: [T, K] (or [..., K]) activations, fp16/bf16/fp32.
        weight: [N, K] int8, unit last stride.
        scale: [N] per-channel scale (any float dtype).

    Returns:
        [T, N] (or [..., N]) in x's dtype.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides.
    """
    op = "int8_matmul"
    x2 = _rows(op, x)
    k = x2.shape[1]
    check_tensor(op, "weight", weight, shape=(None, k), dtypes=(torch.int8,))
    n = weight.shape[0]
    check_tensor(op, "scale", scale, shape=(n,), dtypes=FLOAT_DTYPES)
    check_same_device(op, x=x, weight=weight, scale=scale)
    out = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    if out.numel() == 0 or k == 0:
        return out.zero_().reshape(*x.shape[:-1], n)
    block_m, block_n, block_k = _block_m(x2.shape[0]), 64, 64
    grid = (triton.cdiv(x2.shape[0], block_m), triton.cdiv(n, block_n))
    _int8_matmul_kernel[grid](
        x2,
        weight,
        scale,
        out,
        x2.shape[0],
        n,
        k,
        x2.stride(0),
        weight.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32,
        num_warps=4,
    )
    return out.reshape(*x.shape[:-1], n)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``x @ W.T`` with int4 group-wise asymmetric weights ``W = q * scale + min`` (Triton).

    Args:
        x: [T, K] (or [..., K]) activations, fp16/bf16/fp32.
        packed: [N, K // 2] uint8; byte j holds q[2j] in its low nibble and
            q[2j + 1] in its high nibble.
        scales: [N, K // group_size] per-group scale.
        mins: [N, K // group_size] per-group offset (the value of q == 0).
        group_size: columns per group; a multiple of 16 dividing K (32, 64, 128).

    Returns:
        [T, N] (or [..., N]) in x's dtype.

    Raises:
        KernelError: wrong shapes, dtypes, devices, strides or group size.
    """
    op = "int4_matmul"
    x2 = _rows(op, x)
    k = x2.shape[1]
    if not isinstance(group_size, int) or group_size < 16 or group_size % 16:
        raise KernelError(f"{op}: group_size must be a positive multiple of 16, got {group_size!r}")
    if k % group_size:
        raise KernelError(f"{op}: K={k} is not a multiple of group_size={group_size}")
    groups = k // group_size
    check_tensor(op, "packed", packed, shape=(None, k // 2), dtypes=(torch.uint8,))
    n = packed.shape[0]
    check_tensor(op, "scales", scales, shape=(n, groups), dtypes=FLOAT_DTYPES)
    check_tensor(op, "mins", mins, shape=(n, groups), dtypes=FLOAT_DTYPES)
    check_same_device(op, x=x, packed=packed, scales=scales, mins=mins)
    out = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    if out.numel() == 0 or k == 0:
        return out.zero_().reshape(*x.shape[:-1], n)
    block_k = min(64, group_size & -group_size)  # largest power of two dividing the group, capped
    block_m, block_n = _block_m(x2.shape[0]), 64
    grid = (triton.cdiv(x2.shape[0], block_m), triton.cdiv(n, block_n))
    _int4_matmul_kernel[grid](
        x2,
        packed,
        scales,
        mins,
        out,
        x2.shape[0],
        n,
        k,
        x2.stride(0),
        packed.stride(0),
        scales.stride(0),
        mins.stride(0),
        out.stride(0),
        GROUP=group_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32,
        num_warps=4,
    )
    return out.reshape(*x.shape[:-1], n)
