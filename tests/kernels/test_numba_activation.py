"""Numba SiLU-and-mul against the torch op."""

import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_activation, torch_ops

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize(("rows", "width"), [(1, 3072), (16, 3072), (3, 74), (5, 2), (70, 576)])
def test_matches_torch(rows, width):
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows)) * 4
    torch.testing.assert_close(numba_activation.silu_and_mul(x), torch_ops.silu_and_mul(x), **TOL)


def test_extreme_inputs_stay_finite_and_close():
    """exp's clamped range: silu(-100) ~ -3.7e-42, silu(100) = 100; no inf or NaN."""
    gate = torch.tensor([[-100.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 100.0]])
    x = torch.cat((gate, torch.full_like(gate, 1.5)), dim=1)
    out = numba_activation.silu_and_mul(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch_ops.silu_and_mul(x), **TOL)


def test_parallel_rows_equal_serial_rows():
    """Rows past PARALLEL_MIN_ROWS run threaded: the same bits as one row at a time (batch invariance)."""
    x = torch.randn(numba_activation.PARALLEL_MIN_ROWS + 3, 96)
    batched = numba_activation.silu_and_mul(x)
    for t in (0, 40, x.shape[0] - 1):
        assert torch.equal(numba_activation.silu_and_mul(x[t : t + 1]), batched[t : t + 1])


def test_strided_3d_and_fallback():
    x = torch.randn(4, 100)[:, :64]
    torch.testing.assert_close(numba_activation.silu_and_mul(x), torch_ops.silu_and_mul(x), **TOL)
    x3 = torch.randn(2, 3, 20)
    assert numba_activation.silu_and_mul(x3).shape == (2, 3, 10)
    torch.testing.assert_close(numba_activation.silu_and_mul(x3), torch_ops.silu_and_mul(x3), **TOL)
    assert numba_activation.silu_and_mul(x3.half()).dtype == torch.float16  # torch fallback


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(4, 7), "must be even"),
        (torch.zeros(4, 8, dtype=torch.int64), "x has dtype"),
        (torch.zeros(8, 3).t(), "contiguous in its last dimension"),
    ],
)
def test_rejects_bad_arguments(x, match):
    with pytest.raises(KernelError, match=match):
        numba_activation.silu_and_mul(x)
