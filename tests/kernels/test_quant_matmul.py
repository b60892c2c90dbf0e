"""int8 per-channel and int4 group-wise matmuls: both backends against naive dequantization.

The int4 test draws the 4-bit values first and packs them itself, so the
reference never relies on any unpacking code: a swapped nibble order, a wrong
group index or a misplaced min all show.
"""

import pytest
import torch
from kernel_refs import DEVICE, DTYPES, assert_close, backends, randn

from rusteeze.errors import KernelError
from rusteeze.kernels import triton_ops


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 → [N, K/2] uint8, column 2j in the low nibble, 2j+1 in the high."""
    packed = torch.zeros(q.shape[0], q.shape[1] // 2, dtype=torch.uint8)
    for j in range(q.shape[1] // 2):
        packed[:, j] = q[:, 2 * j] | (q[:, 2 * j + 1] << 4)
    return packed


def reference_int4(x, q, scales, mins, group_size) -> torch.Tensor:
    """x @ W.T with W[n, k] = q[n, k] * scales[n, k // G] + mins[n, k // G], in float64."""
    w = torch.empty(q.shape, dtype=torch.float64)
    for k in range(q.shape[1]):
        g = k // group_size
        w[:, k] = q[:, k].double() * scales[:, g].double().cpu() + mins[:, g].double().cpu()
    return x.double().cpu() @ w.T


def reference_int8(x, weight, scale) -> torch.Tensor:
    """x @ (q * scale[:, None]).T in float64."""
    w = weight.double().cpu() * scale.double().cpu()[:, None]
    return x.double().cpu() @ w.T


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 70, 100), (5, 16, 64), (33, 130, 48)], ids=str)
def test_int8_matmul_matches_reference(ops, dtype, m, n, k):
    x = randn(m, k, dtype=dtype, seed=1)
    gen = torch.Generator().manual_seed(2)
    weight = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8).to(DEVICE)
    scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(DEVICE)
    out = ops.int8_matmul(x, weight, scale)
    assert out.dtype == dtype
    assert_close(out, reference_int8(x, weight, scale), dtype, scale=4.0)


@pytest.mark.parametrize("ops", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "n", "k", "group_size"),
    [(1, 70, 64, 32), (5, 40, 192, 64), (17, 66, 256, 128)],
    ids=lambda v: str(v),
)
def test_int4_matmul_matches_reference(ops, dtype, m, n, k, group_size):
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // group_size, generator=gen) * 0.02 + 0.001).to(DEVICE)
    mins = (torch.randn(n, k // group_size, generator=gen) * 0.1).to(DEVICE)
    x = randn(m, k, dtype=dtype, seed=4)
    out = ops.int4_matmul(x, pack_int4(q).to(DEVICE), scales, mins, group_size)
    assert out.dtype == dtype
    assert_close(out, reference_int4(x, q, scales, mins, group_size), dtype, scale=4.0)


@pytest.mark.parametrize("ops", backends())
def test_quant_matmuls_keep_leading_dimensions(ops):
    x = randn(2, 3, 64, seed=5)
    weight = torch.ones(8, 64, dtype=torch.int8, device=DEVICE)
    scale = torch.full((8,), 0.5, device=DEVICE)
    out = ops.int8_matmul(x, weight, scale)
    assert out.shape == (2, 3, 8)
    assert_close(out, reference_int8(x.reshape(6, 64), weight, scale).reshape(2, 3, 8), torch.float32)
    q = torch.full((8, 64), 3, dtype=torch.uint8)
    scales, mins = torch.ones(8, 2, device=DEVICE), torch.zeros(8, 2, device=DEVICE)
    out4 = ops.int4_matmul(x, pack_int4(q).to(DEVICE), scales, mins, 32)
    assert out4.shape == (2, 3, 8)
    assert_close(out4, (3 * x.double().sum(-1, keepdim=True)).expand(2, 3, 8).cpu(), torch.float32)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"group_size": 8}, "group_size must be a positive multiple of 16"),
        ({"group_size": 48}, "not a multiple of group_size"),
        ({"packed": torch.zeros(8, 64, dtype=torch.uint8)}, "packed has shape"),
        ({"packed": torch.zeros(8, 32, dtype=torch.int8)}, "packed has dtype"),
        ({"scales": torch.ones(8, 3)}, "scales has shape"),
        ({"mins": torch.zeros(7, 2)}, "mins has shape"),
        ({"x": torch.zeros(2, 64, dtype=torch.int32)}, "x has dtype"),
    ],
)
def test_int4_matmul_rejects_bad_arguments(change, match):
    args = {
        "x": torch.zeros(2, 64),
        "packed": torch.zeros(8, 32, dtype=torch.uint8),
        "scales": torch.ones(8, 2),
        "mins": torch.zeros(8, 2),
        "group_size": 32,
    }
    args.update(change)
    args = {name: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for name, v in args.items()}
    with pytest.raises(KernelError, match=match):
        triton_ops.int4_matmul(**args)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"weight": torch.zeros(8, 63, dtype=torch.int8)}, "weight has shape"),
        ({"weight": torch.zeros(8, 64, dtype=torch.uint8)}, "weight has dtype"),
        ({"scale": torch.ones(9)}, "scale has shape"),
        ({"scale": torch.ones(8, dtype=torch.int32)}, "scale has dtype"),
    ],
)
def test_int8_matmul_rejects_bad_arguments(change, match):
    args = {"x": torch.zeros(2, 64), "weight": torch.zeros(8, 64, dtype=torch.int8), "scale": torch.ones(8)}
    args.update(change)
    args = {name: v.to(DEVICE) for name, v in args.items()}
    with pytest.raises(KernelError, match=match):
        triton_ops.int8_matmul(**args)
