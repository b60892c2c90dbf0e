"""SiLU-and-mul (SwiGLU): both backends against naive float64 math."""

import math

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Element by element: g / (1 + e^-g) * u."""
    rows = x.double().cpu().tolist()
    inter = len(rows[0]) // 2
    out = [[g / (1 + math.exp(-g)) * u for g, u in zip(row[:inter], row[inter:], strict=True)] for row in rows]
    return torch.tensor(out, dtype=torch.float64).reshape(len(rows), inter)


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (5, 90), (3, 2200)], ids=str)  # 1100 columns: two programs per row
def test_silu_and_mul_matches_reference(ops, dtype, shape):
    x = randn(*shape, dtype=dtype, seed=1) * 4
    out = ops.silu_and_mul(x)
    assert out.dtype == dtype
    assert_close(out, reference_silu_and_mul(x), dtype)


@pytest.mark.parametrize("ops", backends())
def test_silu_and_mul_strided_rows(ops):
    x = randn(4, 100, seed=2)[:, :60]  # row stride 100
    assert_close(ops.silu_and_mul(x), reference_silu_and_mul(x), torch.float32)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(3, 7), "must be even"),
        (torch.zeros(2, 3, 8), "must have 2 dimensions"),
        (torch.zeros(3, 8, dtype=torch.int32), "x has dtype"),
        (torch.zeros(8, 3).t(), "contiguous in its last dimension"),
    ],
)
def test_silu_and_mul_rejects_bad_arguments(x, match):
    with pytest.raises(KernelError, match=match):
        triton_ops.silu_and_mul(x.to(DEVICE))
