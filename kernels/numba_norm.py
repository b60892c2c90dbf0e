"""RMSNorm and fused residual-add + RMSNorm as Numba CPU kernels.

Memory traffic per row of H float32: RMSNorm reads x and writes the output
(8H bytes; the weight stays in cache); the fused op also reads and writes the
residual (16H bytes), in one pass over x and the residual plus one pass over
the (L1-resident) row for the output.

Each row is reduced in a fixed order (the vectorized sum of squares depends on
H and the CPU's vector width only), so a row's output does not depend on the
other rows: batch invariant. Rows run serially: at decode sizes a parallel
launch costs more than the row (576 floats: ~0.2 µs).

Float32 only; other dtypes (and an in-place residual that is not contiguous)
fall back to the torch ops in :mod:`rusteeze.kernels.torch_ops`.
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_checks import JIT, array, check_cpu, is_f32
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_tensor


@numba.njit(**JIT)
def _rms_norm_rows(x, weight, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight.

    x: [T, H] float32 C-contiguous; weight: [H]; eps: float; out: [T, H], written.
    """
    rows, hidden = x.shape
    inv_h = np.float32(1.0) / np.float32(hidden)
    eps32 = np.float32(eps)
    for t in range(rows):
        ss = np.float32(0.0)
        for i in range(hidden):
            ss += x[t, i] * x[t, i]
        r = np.float32(1.0) / np.sqrt(ss * inv_h + eps32)
        for i in range(hidden):
            out[t, i] = x[t, i] * r * weight[i]


@numba.njit(**JIT)
def _add_rms_norm_rows(x, residual, weight, eps, out):
    """residual[t] += x[t]; out[t] = rms_norm(residual[t]).

    x, residual, out: [T, H] float32 C-contiguous (residual written in place); weight: [H].
    """
    rows, hidden = x.shape
    inv_h = np.float32(1.0) / np.float32(hidden)
    eps32 = np.float32(eps)
    for t in range(rows):
        ss = np.float32(0.0)
        for i in range(hidden):
            v = residual[t, i] + x[t, i]
            residual[t, i] = v
            ss += v * v
        r = np.float32(1.0) / np.sqrt(ss * inv_h + eps32)
        for i in range(hidden):
            out[t, i] = residual[t, i] * r * weight[i]


def _check(op: str, x: object, residual: object, weight: object, eps: float) -> None:
    """Full argument check (the slow path): raises KernelError naming the bad argument."""
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise KernelError(f"{op}: x must have at least one dimension")
    check_tensor(op, "weight", weight, shape=(x.shape[-1],), dtypes=FLOAT_DTYPES)
    tensors = {"x": x, "weight": weight}
    if residual is not None:
        check_tensor(op, "residual", residual, shape=tuple(x.shape), dtypes=FLOAT_DTYPES)
        tensors["residual"] = residual
    check_cpu(op, **tensors)
    if not eps >= 0:
        raise KernelError(f"{op}: eps must be >= 0, got {eps}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (Numba).

    Args:
        x: [T, H] (or [..., H]) float32 activations.
        weight: [H] float32 scale.
        eps: added to the mean square before the square root.

    Returns:
        [T, H] ``x * rsqrt(mean(x²) + eps) * weight``.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides. Other float
        dtypes fall back to ``torch_ops.rms_norm``.
    """
    if not (is_f32(x, 2) and is_f32(weight, 1) and weight.shape[0] == x.shape[1] and eps >= 0):
        _check("rms_norm", x, None, weight, eps)
        if x.dtype is not torch.float32 or weight.dtype is not torch.float32:
            return torch_ops.rms_norm(x, weight, eps)
        shape = x.shape
        out = rms_norm(x.reshape(-1, shape[-1]).contiguous(), weight.contiguous(), eps)
        return out.view(shape)
    out = torch.empty_like(x)
    _rms_norm_rows(x.numpy(), array(weight), eps, out.numpy())
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``residual += x`` (in place), then RMSNorm of the new residual (Numba).

    Args:
        x: [T, H] float32, the block's output.
        residual: [T, H] float32, the residual stream; updated in place.
        weight: [H] float32 scale.
        eps: RMSNorm epsilon.

    Returns:
        [T, H] ``rms_norm(residual + x)``.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides. Other float
        dtypes and a non-contiguous residual fall back to
        ``torch_ops.fused_add_rms_norm``.
    """
    if not (
        is_f32(x, 2)
        and is_f32(residual, 2)
        and is_f32(weight, 1)
        and residual.shape == x.shape
        and weight.shape[0] == x.shape[1]
        and eps >= 0
    ):
        _check("fused_add_rms_norm", x, residual, weight, eps)
        dtypes_ok = x.dtype is residual.dtype is weight.dtype is torch.float32
        if not dtypes_ok or not residual.is_contiguous():
            return torch_ops.fused_add_rms_norm(x, residual, weight, eps)
        shape = x.shape
        hidden = shape[-1]
        out = fused_add_rms_norm(
            x.reshape(-1, hidden).contiguous(), residual.view(-1, hidden), weight.contiguous(), eps
        )
        return out.view(shape)
    out = torch.empty_like(residual)
    _add_rms_norm_rows(x.numpy(), residual.numpy(), array(weight), eps, out.numpy())
    return out
