"""float16 → float32 in the Numba kernels: the weight tiles hold their scales and mins as float16.

Numba has no float16 arrays, so a float16 tensor reaches a kernel as its bits, a
zero-copy uint16 view (:func:`half_bits`), and the kernel converts each value
where it reads it, with :func:`half_value`:

* on x86 with F16C (every AVX2 CPU, AVX-512 ones included), LLVM's ``fpext half
  → float``, which the loop vectorizer turns into ``vcvtph2ps`` (16 values per
  instruction, in registers);
* elsewhere :func:`half_to_float`, integer operations (LLVM vectorizes them
  too: the three cases become selects); there ``fpext`` would call
  ``__extendhfsf2``, a runtime function that Numba's JIT need not link.

Both are exact for every float16: normal values (exponent rebiased),
subnormals (``mag · 2^-24``, a normal float32, so no float32 subnormal is ever
an operand: a CPU flushing those to zero cannot change the result), ±0, ±inf,
and NaN (its payload kept, made quiet as F16C and torch do); the kernels'
float32 math then computes the same bits as with float32 tiles holding those
values. Converting in registers where a value is used, even once per row of a
block, measured as fast as the float32 tiles and faster than converting each
group once into a float32 buffer (a store and a reload per value;
``benches/quant_kernels.py``).

The choice is made when Numba compiles, from the target's features (the host's,
or ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``'s), as :mod:`numba_pair_dot` does.
After editing this file, delete the cached entries of its callers in
``kernels/__pycache__`` (see :mod:`numba_pair_dot`).
"""

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from rusteeze.errors import KernelError
from rusteeze.kernels.numba_checks import JIT

_SUBNORMAL_STEP = np.float32(2.0**-24)  # float16's smallest subnormal


def half_bits(t: torch.Tensor) -> np.ndarray:
    """The uint16 numpy view (no copy) of a float16 CPU tensor: how the kernels take float16 arrays.

    Raises:
        KernelError: ``t`` is not a float16 CPU tensor.
    """
    if t.dtype is not torch.float16 or not t.is_cpu:
        raise KernelError(f"expected float16 scales on the CPU (the weight tiles' layout), got {t.dtype} on {t.device}")
    return t.numpy().view(np.uint16)


@numba.njit(inline="always", **JIT)
def half_to_float(h):  # pragma: no cover - compiled
    """The float16 whose bits are ``h`` (uint16) → that value as float32, exactly (NaN: quiet, payload kept)."""
    # Numba widens uint32 arithmetic to 64 bits: each step is narrowed back, so .view sees a 4-byte value
    v = np.uint32(h)
    mag = np.uint32(v & np.uint32(0x7FFF))
    sign = np.uint32((v & np.uint32(0x8000)) << np.uint32(16))
    if mag > np.uint32(0x7C00):  # NaN: the payload shifted as in a normal value, made quiet (as F16C does)
        out = np.uint32((mag << np.uint32(13)) | np.uint32(0x7FC00000))
    elif mag == np.uint32(0x7C00):  # inf
        out = np.uint32(0x7F800000)
    elif mag >= np.uint32(0x0400):  # normal: exponent bias 15 → 127, mantissa 10 → 23 bits
        out = np.uint32((mag << np.uint32(13)) + np.uint32(0x38000000))
    else:  # zero or subnormal: mag · 2^-24 (an integer below 2^10 times a power of two: exact)
        out = np.float32(np.float32(np.int32(mag)) * _SUBNORMAL_STEP).view(np.uint32)
    return np.uint32(out | sign).view(np.float32)


def _f16c(context) -> bool:
    """Whether the machine Numba compiles for converts float16 in hardware (x86 F16C)."""
    return "+f16c" in set(getattr(context.codegen(), "_tm_features", "").split(","))


@intrinsic
def half_value(typingctx, h):
    """float16 bits h (uint16) → its float32 value, exactly: ``fpext`` with F16C, else :func:`half_to_float`."""
    if h != types.uint16:
        return None
    sig = types.float32(h)

    def codegen(context, builder, sig, args):
        if not _f16c(context):
            return context.compile_internal(builder, half_to_float.py_func, sig, args)
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen
