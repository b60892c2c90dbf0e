"""SiLU-and-mul (SwiGLU) as a Numba CPU kernel.

Memory traffic per row: reads the [2I] gate|up row, writes [I] (12I bytes).
``silu(g) = g / (1 + exp(-g))`` with the vectorizable exp of
:func:`~rusteeze.kernels.numba_checks.exp_parts` (numba's own ``np.exp`` in a
loop is a scalar libm call without SVML: 2-3x slower here).

Rows are independent and each element is computed on its own: batch
invariant. Large batches (prefill) split rows across threads.

Float32 only; other dtypes fall back to ``torch_ops.silu_and_mul``.
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_checks import JIT, check_cpu, exp_parts, is_f32
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_tensor

PARALLEL_MIN_ROWS = 64  # below this a parallel launch costs more than it saves


@numba.njit(**JIT)
def _silu_and_mul_row(x, out, pbuf, ebuf):
    """out[i] = silu(x[i]) * x[I + i] for one row. x: [2I], out: [I]; pbuf/ebuf: [I] scratch."""
    inter = out.shape[0]
    fbuf = ebuf.view(np.float32)
    for i in range(inter):
        p, e = exp_parts(-x[i])
        pbuf[i] = p
        ebuf[i] = e
    for i in range(inter):
        out[i] = x[i] / (np.float32(1.0) + pbuf[i] * fbuf[i]) * x[inter + i]


@numba.njit(**JIT)
def _silu_and_mul_rows(x, out):
    """x: [T, 2I] float32 C-contiguous; out: [T, I], written."""
    inter = out.shape[1]
    pbuf = np.empty(inter, np.float32)
    ebuf = np.empty(inter, np.int32)
    for t in range(x.shape[0]):
        _silu_and_mul_row(x[t], out[t], pbuf, ebuf)


@numba.njit(parallel=True, **JIT)
def _silu_and_mul_rows_parallel(x, out):
    """As :func:`_silu_and_mul_rows`, rows in tiles of 16 split across threads."""
    rows, inter = out.shape
    tiles = (rows + 15) // 16
    for tile in numba.prange(tiles):
        pbuf = np.empty(inter, np.float32)
        ebuf = np.empty(inter, np.int32)
        for t in range(tile * 16, min(rows, tile * 16 + 16)):
            _silu_and_mul_row(x[t], out[t], pbuf, ebuf)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: ``silu(x[:, :I]) * x[:, I:]`` (Numba).

    Args:
        x: [T, 2I] float32, the fused gate and up projections.

    Returns:
        [T, I].

    Raises:
        KernelError: wrong shapes, devices or strides. Other float dtypes fall
        back to ``torch_ops.silu_and_mul``.
    """
    if not (is_f32(x, 2) and x.shape[1] % 2 == 0):
        op = "silu_and_mul"
        check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
        check_cpu(op, x=x)
        if x.dim() < 1 or x.shape[-1] % 2:
            raise KernelError(f"{op}: x's last dimension must be even (gate | up), got shape {tuple(x.shape)}")
        if x.dtype is not torch.float32:
            return torch_ops.silu_and_mul(x)
        shape = x.shape
        return silu_and_mul(x.reshape(-1, shape[-1]).contiguous()).view(*shape[:-1], shape[-1] // 2)
    rows = x.shape[0]
    out = torch.empty((rows, x.shape[1] // 2), dtype=torch.float32)
    kernel = _silu_and_mul_rows_parallel if rows >= PARALLEL_MIN_ROWS else _silu_and_mul_rows
    kernel(x.numpy(), out.numpy())
    return out
