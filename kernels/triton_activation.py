"""SwiGLU activation ``silu(gate) * up`` as a Triton kernel.

The input is the fused gate/up projection ``[T, 2I]``; program ``(t, j)``
handles columns ``[j·BLOCK, (j+1)·BLOCK)`` of token ``t``.

Memory traffic per token, ``e`` bytes per element: read ``2I·e``, write ``I·e``.
"""

import torch
import triton
import triton.language as tl

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import FLOAT_DTYPES, check_same_device, check_tensor

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2I] gate in columns [0, I), up in [I, 2I)
    out_ptr,  # [T, I] output
    stride_x,  # elements between rows of x
    stride_out,  # elements between rows of out
    inter,  # I
    BLOCK: tl.constexpr,  # columns per program
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    # Round silu(gate) to the input dtype before the product, like F.silu(gate) * up.
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    y = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation ``silu(x[:, :I]) * x[:, I:]`` (Triton).

    Args:
        x: [T, 2I] the fused gate and up projections, unit last stride.

    Returns:
        [T, I] in x's dtype.

    Raises:
        KernelError: wrong shape (odd last dim), dtype, device or stride.
    """
    op = "silu_and_mul"
    check_tensor(op, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_same_device(op, x=x)
    if x.shape[1] % 2:
        raise KernelError(f"{op}: x's last dimension must be even (gate | up), got {x.shape[1]}")
    tokens, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((tokens, inter), dtype=x.dtype, device=x.device)
    if tokens == 0 or inter == 0:
        return out
    block = min(BLOCK, triton.next_power_of_2(inter))
    grid = (tokens, triton.cdiv(inter, block))
    _silu_and_mul_kernel[grid](x, out, x.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4)
    return out
