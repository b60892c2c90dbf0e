"""The CPU float linear path against F.linear."""

import pytest
import torch
import torch.nn.functional as F

from rusteeze.models.linear import SLICED_MAX_TOKENS, Linear, linear


@pytest.mark.parametrize("tokens", [1, 3, 16, SLICED_MAX_TOKENS, SLICED_MAX_TOKENS + 1])
@pytest.mark.parametrize(("n", "k"), [(96, 40), (50, 24)])  # 50 rows: not a multiple of the slice count
def test_linear_matches_f_linear(tokens, n, k):
    torch.manual_seed(0)
    x, w, b = torch.randn(tokens, k), torch.randn(n, k), torch.randn(n)
    out = linear(x, w, b)
    assert out.shape == (tokens, n) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_strided_weights_fall_back():
    x = torch.randn(2, 8)
    w = torch.randn(16, 8)
    assert torch.equal(linear(x.double(), w.double()), F.linear(x.double(), w.double()))
    strided = torch.randn(8, 16).T  # [16, 8], not contiguous
    torch.testing.assert_close(linear(x, strided), F.linear(x, strided))


def test_module_keeps_nn_linear_parameters():
    layer = Linear(8, 16, bias=True)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}
    # The module skips random init (the loader fills it), so fill it as the loader would:
    # otherwise the uninitialized memory may hold NaN and the comparison means nothing.
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, 8))
        layer.bias.copy_(torch.randn(16))
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
