"""Shared pieces of the kernel tests: device, dtypes, tolerances, both backends.

Every kernel test computes a simple reference (Python loops or naive float64
math) and checks *both* implementations against it: the torch twin and the
Triton kernel. On CPU the Triton kernel runs under the interpreter
(``TRITON_INTERPRET=1``, set in tests/conftest.py before triton is imported);
bf16 runs only on CUDA, where the interpreter is not involved.
"""

import math

import pytest
import torch

from rusteeze.kernels import torch_ops, triton_ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# bf16 is listed everywhere and skipped without CUDA (numpy, under the interpreter, has no bf16).
DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(
        torch.bfloat16, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 needs a CUDA device")
    ),
]

# (atol, rtol) for outputs of order 1, per dtype.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (6e-2, 2e-2),
}

BACKENDS = {"torch": torch_ops, "triton": triton_ops}


def backends() -> list:
    """pytest params: the two implementations, by name."""
    return [pytest.param(module, id=name) for name, module in BACKENDS.items()]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    """Compare an output against a float64 reference at ``dtype``'s tolerance (times ``scale``)."""
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), "output has NaN or Inf"
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), atol=atol * scale, rtol=rtol * scale, check_dtype=False
    )


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Deterministic normal values on the test device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=DEVICE, dtype=dtype)


def reference_attention(q, keys, values, specs, scale, window) -> torch.Tensor:
    """out[row, h] = softmax(q·k_j · scale) · v_j over visible keys j, in float64.

    A per-query, per-head loop over each sequence's keys in *logical* order
    (``keys[b]``, ``values[b]``: [ctx, Hk, D]; ``specs[b] = (ctx, q_len)``): it
    never sees a block table or a cache.
    """
    hq, hk = q.shape[1], keys[0].shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    row = 0
    for (ctx, q_len), k_seq, v_seq in zip(specs, keys, values, strict=True):
        for i in range(q_len):
            pos = ctx - q_len + i  # the query is the token at this absolute position
            lo = max(0, pos - window + 1) if window else 0
            for h in range(hq):
                k = k_seq[lo : pos + 1, h // (hq // hk)].double().cpu()  # [n, D]
                v = v_seq[lo : pos + 1, h // (hq // hk)].double().cpu()
                scores = [float(kj @ q[row, h].double().cpu()) * scale for kj in k]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                out[row, h] = sum(w / total * vj for w, vj in zip(weights, v, strict=True))
            row += 1
    return out
