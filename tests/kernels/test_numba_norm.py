"""Numba RMSNorm and fused residual-add + RMSNorm against the torch ops."""

import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_norm, torch_ops

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(rows, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen) * 3
    residual = torch.randn(rows, hidden, generator=gen)
    weight = torch.randn(hidden, generator=gen)
    return x, residual, weight


@pytest.mark.parametrize(("rows", "hidden"), [(1, 40), (7, 576), (16, 576), (3, 37), (130, 64)])
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_rms_norm_matches_torch(rows, hidden, eps):
    x, _, weight = _inputs(rows, hidden)
    torch.testing.assert_close(numba_norm.rms_norm(x, weight, eps), torch_ops.rms_norm(x, weight, eps), **TOL)


@pytest.mark.parametrize(("rows", "hidden"), [(1, 40), (5, 576), (33, 100)])
def test_fused_add_rms_norm_matches_torch(rows, hidden):
    x, residual, weight = _inputs(rows, hidden, seed=1)
    res_numba, res_torch = residual.clone(), residual.clone()
    out = numba_norm.fused_add_rms_norm(x, res_numba, weight, 1e-5)
    expected = torch_ops.fused_add_rms_norm(x, res_torch, weight, 1e-5)
    assert torch.equal(res_numba, res_torch)  # the sum is one float32 add either way
    torch.testing.assert_close(out, expected, **TOL)


def test_parameter_weight_strided_rows_and_3d_input():
    x, _residual, weight = _inputs(6, 64, seed=2)
    param = torch.nn.Parameter(weight.clone())  # requires grad: viewed through detach()
    torch.testing.assert_close(numba_norm.rms_norm(x, param, 1e-6), torch_ops.rms_norm(x, weight, 1e-6), **TOL)
    wide = torch.randn(6, 100)[:, 10:74]  # row stride 100
    torch.testing.assert_close(numba_norm.rms_norm(wide, weight, 1e-6), torch_ops.rms_norm(wide, weight, 1e-6), **TOL)
    x3 = x.view(2, 3, 64)
    assert numba_norm.rms_norm(x3, weight, 1e-6).shape == (2, 3, 64)
    torch.testing.assert_close(numba_norm.rms_norm(x3, weight, 1e-6).view(6, 64), torch_ops.rms_norm(x, weight, 1e-6))


def test_rows_do_not_depend_on_the_batch():
    x, _residual, weight = _inputs(16, 576, seed=3)
    batched = numba_norm.rms_norm(x, weight, 1e-6)
    for t in (0, 7, 15):
        assert torch.equal(numba_norm.rms_norm(x[t : t + 1], weight, 1e-6), batched[t : t + 1])


def test_other_dtypes_fall_back_to_torch():
    x, residual, weight = _inputs(4, 40, seed=4)
    out = numba_norm.rms_norm(x.bfloat16(), weight.bfloat16(), 1e-6)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch_ops.rms_norm(x.bfloat16(), weight.bfloat16(), 1e-6))
    res16 = residual.half()
    out = numba_norm.fused_add_rms_norm(x.half(), res16, weight.half(), 1e-6)
    assert out.dtype == torch.float16


@pytest.mark.parametrize(
    ("x", "weight", "match"),
    [
        (torch.zeros(4, 16), torch.ones(15), "weight has shape"),
        (torch.zeros(4, 16), torch.ones(16, dtype=torch.int32), "weight has dtype"),
        (torch.zeros(16, 4).t(), torch.ones(16), "contiguous in its last dimension"),
        ("x", torch.ones(16), "x must be a torch.Tensor"),
    ],
)
def test_rms_norm_rejects_bad_arguments(x, weight, match):
    with pytest.raises(KernelError, match=match):
        numba_norm.rms_norm(x, weight, 1e-6)


def test_fused_rejects_bad_residual_and_eps():
    x = torch.zeros(4, 16)
    with pytest.raises(KernelError, match="residual has shape"):
        numba_norm.fused_add_rms_norm(x, torch.zeros(3, 16), torch.ones(16), 1e-6)
    with pytest.raises(KernelError, match="eps"):
        numba_norm.rms_norm(x, torch.ones(16), -1.0)
