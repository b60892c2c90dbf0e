"""Float linear layers with a faster CPU path.

On this project's reference CPU (AMD EPYC, AVX2) MKL's ``x @ W.T`` (what
``F.linear`` calls) is slow for decode-sized batches: a single token streams
the weights at ~6 GB/s of the ~18 GB/s the memory gives. The same product
computed as ``W @ x.T`` in a few row slices through ``torch.bmm`` is 1.2-2.6x
faster for 1 to 16 tokens and even at 64, but 10-30 % slower for prefill-sized
batches, which keep ``F.linear`` (``benches/linear.py`` measures both, with the
weights streamed from memory as in a real step).
"""

import torch
import torch.nn.functional as F
from torch import nn

ROW_SLICES = 8  # bmm batch: lets both cores stream their own slice of W at T = 1
SLICED_MAX_TOKENS = 64  # above this, F.linear's gemm is faster


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)``: x [T, K], weight [N, K] → [T, N].

    Up to ``SLICED_MAX_TOKENS`` float32 CPU rows take the sliced ``W @ x.T``
    path; anything else (more rows, CUDA, 16-bit types, other ranks, strided weights) is plain
    ``F.linear``.
    """
    n, k = weight.shape
    t = x.shape[0]
    if (
        t > SLICED_MAX_TOKENS
        or x.device.type != "cpu"
        or x.dim() != 2
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or not weight.is_contiguous()
    ):
        return F.linear(x, weight, bias)
    slices = ROW_SLICES if n % ROW_SLICES == 0 else 1
    out = torch.bmm(weight.view(slices, n // slices, k), x.T.expand(slices, k, t))  # [S, N/S, T]
    out = out.view(n, t).T.contiguous()  # [T, N]
    return out if bias is None else out + bias


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) running through :func:`linear`.

    No random initialization: weights always come from a checkpoint (and
    torch's init functions on the meta device import torch._dynamo and Triton,
    ~65 MB of resident memory and seconds of start-up for nothing).
    """

    def reset_parameters(self) -> None:
        """Leave the parameters as allocated; the loader fills them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in_features] → [T, out_features]."""
        return linear(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """``nn.Embedding`` without random initialization (see :class:`Linear`)."""

    def reset_parameters(self) -> None:
        """Leave the table as allocated; the loader fills it."""
