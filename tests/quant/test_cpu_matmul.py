"""torch's packed CPU kernels as the quantized layers use them, against the plain int4 math."""

import pytest
import torch

from rusteeze.quant import cpu_matmul
from rusteeze.quant.tensors import dequantize_int4, quantize_int4

pytestmark = pytest.mark.skipif(
    not cpu_matmul.int4_supported(64, 128, 32), reason="this torch has no packed int4 CPU kernel"
)


@pytest.mark.parametrize(("n", "k", "group"), [(64, 128, 32), (96, 192, 64)])
def test_int4pack_unpacks_to_the_quantized_weight(n, k, group):
    torch.manual_seed(0)
    packed, scales, mins = quantize_int4(torch.randn(n, k), group)
    weight, scales_zeros = cpu_matmul.prepare_int4(packed, scales, mins)
    expected = dequantize_int4(packed, scales, mins, group)
    # scales and zeros are stored in bf16 by the kernel's layout: ~3 significant digits.
    torch.testing.assert_close(cpu_matmul.dequantize_int4pack(weight, scales_zeros, group), expected, rtol=0, atol=0.03)


@pytest.mark.parametrize("tokens", [1, cpu_matmul.DEQUANT_MIN_TOKENS - 1, cpu_matmul.DEQUANT_MIN_TOKENS])
def test_int4_matmul_matches_float_math_on_both_paths(tokens):
    torch.manual_seed(0)
    n, k, group = 64, 128, 32
    packed, scales, mins = quantize_int4(torch.randn(n, k), group)
    weight, scales_zeros = cpu_matmul.prepare_int4(packed, scales, mins)
    x = torch.randn(tokens, k)
    out = cpu_matmul.int4_matmul(x, weight, scales_zeros, group)
    assert out.shape == (tokens, n) and out.dtype == torch.float32
    held = x @ cpu_matmul.dequantize_int4pack(weight, scales_zeros, group).T  # the kernel's own weight
    if tokens >= cpu_matmul.DEQUANT_MIN_TOKENS:  # float32 path: exact up to summation order
        torch.testing.assert_close(out, held, rtol=1e-5, atol=1e-4)
    else:  # bf16 activations: ~3 significant digits
        torch.testing.assert_close(out, held, rtol=0.02, atol=0.1)
    # and both stay close to the unrounded int4 weights (bf16 scales and zeros)
    torch.testing.assert_close(out, x @ dequantize_int4(packed, scales, mins, group).T, rtol=0.05, atol=0.3)
