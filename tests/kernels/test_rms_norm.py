"""RMSNorm and fused residual-add + RMSNorm: both backends against a per-row loop."""

import math

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Row by row in float64: x / sqrt(mean(x²) + eps) * w."""
    out = torch.empty(x.shape, dtype=torch.float64)
    w = weight.double().cpu()
    for i, row in enumerate(x.double().cpu()):
        mean_sq = sum(v * v for v in row.tolist()) / len(row)
        out[i] = row / math.sqrt(mean_sq + eps) * w
    return out


SHAPES = [(1, 8), (7, 37), (3, 300)]


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm_matches_reference(ops, dtype, shape):
    x = randn(*shape, dtype=dtype, seed=1) * 3
    weight = randn(shape[1], dtype=dtype, seed=2)
    out = ops.rms_norm(x, weight, 1e-6)
    assert out.dtype == dtype
    assert_close(out, reference_rms_norm(x, weight, 1e-6), dtype)


@pytest.mark.parametrize("ops", backends())
def test_rms_norm_strided_rows_and_large_eps(ops):
    """Rows of a wider buffer (row stride != H); eps large enough to matter."""
    base = randn(5, 64, seed=3)
    x = base[:, 10:43]  # [5, 33], row stride 64
    weight = randn(33, seed=4)
    assert_close(ops.rms_norm(x, weight, 0.5), reference_rms_norm(x, weight, 0.5), torch.float32)


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_updates_residual(ops, dtype):
    x = randn(6, 45, dtype=dtype, seed=5)
    residual = randn(6, 45, dtype=dtype, seed=6)
    weight = randn(45, dtype=dtype, seed=7)
    expected_residual = (residual.double() + x.double()).to(dtype)  # the sum is stored in residual's dtype
    out = ops.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert_close(residual, expected_residual.double(), dtype)
    assert_close(out, reference_rms_norm(expected_residual, weight, 1e-5), dtype)


@pytest.mark.parametrize("ops", backends())
def test_rms_norm_mixed_weight_dtype_promotes_like_torch(ops):
    """fp16 activations with an fp32 weight: normalized in fp16, scaled in fp32."""
    x = randn(4, 20, dtype=torch.float16, seed=8)
    weight = randn(20, seed=9)
    out = ops.rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.float32
    assert_close(out, reference_rms_norm(x, weight, 1e-6), torch.float16)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "w_dtype", "match"),
    [
        ((4, 16), (15,), torch.float32, "weight has shape"),
        ((4, 16), (16,), torch.int32, "weight has dtype"),
        ((16,), (16,), torch.float32, None),  # 1-D input is fine: one row
    ],
)
def test_rms_norm_rejects_bad_arguments(x_shape, w_shape, w_dtype, match):
    x = torch.randn(*x_shape, device=DEVICE)
    weight = torch.ones(w_shape, dtype=w_dtype, device=DEVICE)
    if match is None:
        assert triton_ops.rms_norm(x, weight, 1e-6).shape == x.shape
        return
    with pytest.raises(KernelError, match=match):
        triton_ops.rms_norm(x, weight, 1e-6)


def test_rms_norm_rejects_non_unit_last_stride_and_bad_residual():
    x = torch.randn(16, 4, device=DEVICE).t()  # [4, 16], last stride 4
    with pytest.raises(KernelError, match="contiguous in its last dimension"):
        triton_ops.rms_norm(x, torch.ones(16, device=DEVICE), 1e-6)
    x = torch.randn(4, 16, device=DEVICE)
    with pytest.raises(KernelError, match="residual has shape"):
        triton_ops.fused_add_rms_norm(x, torch.zeros(3, 16, device=DEVICE), torch.ones(16, device=DEVICE), 1e-6)
    with pytest.raises(KernelError, match="residual has dtype"):
        triton_ops.fused_add_rms_norm(
            x, torch.zeros(4, 16, dtype=torch.int64, device=DEVICE), torch.ones(16, device=DEVICE), 1e-6
        )
