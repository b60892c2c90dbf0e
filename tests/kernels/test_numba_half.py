"""numba_half: float16 bits → float32, against torch's conversion for all 65536 bit patterns, on every target."""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_half as nh

ALL_BITS = np.arange(1 << 16, dtype=np.uint16)


def torch_floats(bits: np.ndarray) -> np.ndarray:
    """uint16 bits → torch's float16 → float32 values, as their uint32 bits (NaN payloads compared too)."""
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.float16).float().numpy().view(np.uint32)


@numba.njit
def _scalar(bits, out):
    for i in range(bits.shape[0]):
        out[i] = nh.half_to_float(bits[i])


@numba.njit
def _values(bits, out):
    for i in range(bits.shape[0]):
        out[i] = nh.half_value(bits[i])


def test_half_to_float_matches_torch_for_every_bit_pattern():
    out = np.empty(1 << 16, np.float32)
    _scalar(ALL_BITS, out)
    assert np.array_equal(out.view(np.uint32), torch_floats(ALL_BITS))  # ±0, subnormals, ±inf, NaN payloads


def test_half_value_matches_torch_for_every_bit_pattern():
    out = np.empty(1 << 16, np.float32)
    _values(ALL_BITS, out)
    assert np.array_equal(out.view(np.uint32), torch_floats(ALL_BITS))


def test_half_bits_is_a_view_of_float16_only():
    t = torch.tensor([1.0, -2.5, 65504.0], dtype=torch.float16)
    b = nh.half_bits(t)
    assert b.dtype == np.uint16 and b.tolist() == [0x3C00, 0xC100, 0x7BFF]
    b[0] = 0x4000  # the same memory
    assert t[0] == 2.0
    with pytest.raises(KernelError, match="float16"):
        nh.half_bits(t.float())


# Compiled in a child process for another CPU: x86-64 without F16C takes the integer operations, Haswell vcvtph2ps.
_TARGETS = {
    "haswell": ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+popcnt,+sse,+sse2,"
                "+sse3,+sse4.1,+sse4.2,+ssse3,+xsave", True),
    "x86-64": ("+64bit,+cmov,+cx8,+fxsr,+mmx,+sse,+sse2", False),
}  # fmt: skip
_TARGET_CHECK = """
    import sys
    import numba, numpy as np, torch
    from rusteeze.kernels import numba_half as nh

    @numba.njit
    def values(bits, out):
        for i in range(bits.shape[0]):
            out[i] = nh.half_value(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(1 << 16, np.float32)
    values(bits, out)
    ref = torch.from_numpy(bits.view(np.int16).copy()).view(torch.float16).float().numpy()
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), "values differ"
    asm = "".join(values.inspect_asm(s) for s in values.signatures)
    assert ("vcvtph2ps" in asm) == (sys.argv[1] == "True") and "zmm" not in asm, "not the expected instructions"
    print("ok")
"""


@pytest.mark.parametrize("cpu", sorted(_TARGETS))
def test_half_value_compiled_for_avx2_and_for_plain_x86_64(cpu, tmp_path):
    features, f16c = _TARGETS[cpu]
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_TARGET_CHECK), str(f16c)], capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
