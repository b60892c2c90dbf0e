"""RMSNorm and fused residual-add + RMSNorm as Triton kernels.

One program normalizes one row (token) of ``H`` features held entirely in
registers (``BLOCK_H = next_pow2(H)``), accumulating in float32.

Memory traffic per row, with ``e`` bytes per element:
    rms_norm:            read x (H·e) + weight (H·e, cached) → write out (H·e)
    fused_add_rms_norm:  read x, residual (2·H·e) → write residual, out (2·H·e)
"""

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_same_device, check_tensor

MAX_HIDDEN = 65536  # one row must fit in one program's registers


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [T, H] input rows (row stride stride_x, unit column stride)
    residual_ptr,  # [T, H] residual stream, read and written in place when HAS_RESIDUAL
    weight_ptr,  # [H] scale
    out_ptr,  # [T, H] output rows (row stride stride_out)
    stride_x,  # elements between consecutive rows of x
    stride_res,  # elements between consecutive rows of residual
    stride_out,  # elements between consecutive rows of out
    H,  # hidden size (number of valid columns)
    eps,  # added to the mean square before rsqrt
    HAS_RESIDUAL: tl.constexpr,  # True: residual += x, normalize the new residual
    BLOCK_H: tl.constexpr,  # next power of two >= H
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        res_ptrs = residual_ptr + row * stride_res + cols
        r = tl.load(res_ptrs, mask=mask, other=0.0)
        # Round the sum to the residual's dtype first: the stored residual and the
        # normalized value must agree, exactly as ``residual.add_(x)`` would.
        x = (r.to(tl.float32) + x.to(tl.float32)).to(residual_ptr.dtype.element_ty)
        tl.store(res_ptrs, x, mask=mask)
    xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, axis=0) / H
    rstd = 1.0 / tl.sqrt(mean_sq + eps)
    # Same rounding as the torch twin: normalize in fp32, round to the input dtype,
    # then scale by the weight.
    normed = (xf * rstd).to(x.dtype)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    y = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _as_rows(op: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """View ``[..., H]`` as ``[T, H]`` without copying (in-place ops need the same storage)."""
    if t.dim() == 2:
        return t
    if t.dim() < 1:
        raise KernelError(f"{op}: {name} must have at least one dimension")
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError as e:
        raise KernelError(f"{op}: {name} with shape {tuple(t.shape)} cannot be viewed as rows: {e}") from e


def _launch(op: str, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise KernelError(f"{op}: x must have at least one dimension")
    hidden = x.shape[-1]
    check_tensor(op, "weight", weight, shape=(hidden,), dtypes=FLOAT_DTYPES)
    tensors = {"x": x, "weight": weight}
    if residual is not None:
        check_tensor(op, "residual", residual, shape=tuple(x.shape), dtypes=FLOAT_DTYPES)
        tensors["residual"] = residual
    check_same_device(op, **tensors)
    if hidden > MAX_HIDDEN:
        raise KernelError(f"{op}: hidden size {hidden} exceeds the kernel's limit of {MAX_HIDDEN}")
    if not eps >= 0:
        raise KernelError(f"{op}: eps must be >= 0, got {eps}")

    normed_dtype = residual.dtype if residual is not None else x.dtype
    out = torch.empty(x.shape, dtype=torch.promote_types(normed_dtype, weight.dtype), device=x.device)
    x2 = _as_rows(op, "x", x)
    r2 = _as_rows(op, "residual", residual) if residual is not None else x2
    o2 = out.view(-1, hidden)
    rows = x2.shape[0]
    if rows == 0 or hidden == 0:
        return out
    block_h = triton.next_power_of_2(hidden)
    num_warps = min(max(block_h // 512, 1), 16)
    _rms_norm_kernel[(rows,)](
        x2,
        r2,
        weight,
        o2,
        x2.stride(0),
        r2.stride(0),
        o2.stride(0),
        hidden,
        float(eps),
        HAS_RESIDUAL=residual is not None,
        BLOCK_H=block_h,
        num_warps=num_warps,
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (Triton).

    Args:
        x: [T, H] (or [..., H]) activations, fp16/bf16/fp32, unit last stride.
        weight: [H] scale.
        eps: added to the mean square before the square root.

    Returns:
        [T, H] ``(x * rsqrt(mean(x²) + eps)).to(x.dtype) * weight``, in the
        promoted dtype of x and weight (x's dtype when they match).

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides.
    """
    return _launch("rms_norm", x, None, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``residual += x`` (in place), then RMSNorm of the new residual (Triton).

    Args:
        x: [T, H] the block's output.
        residual: [T, H] the residual stream; updated in place.
        weight: [H] scale.
        eps: RMSNorm epsilon.

    Returns:
        [T, H] ``rms_norm(residual + x)``.

    Raises:
        KernelError: wrong shapes, dtypes, devices or strides.
    """
    return _launch("fused_add_rms_norm", x, residual, weight, eps)
