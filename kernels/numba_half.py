"""float16 → float32 in the Numba kernels: the weight tiles hold their scales and mins as float16.

Numba has no float16 arrays, so a float16 tensor reaches a kernel as its bits, a
zero-copy uint16 view (:func:`half_bits`), and the kernel converts:

* :func:`half_to_float`: one value, in integer operations (plain Numba; LLVM
  vectorizes a loop of it, the three cases becoming selects). Exact for every
  float16: normal values (exponent rebiased), subnormals (``mag · 2^-24``, a
  normal float32, so no float32 subnormal is ever an operand: a CPU flushing
  those to zero cannot change the result), ±0, ±inf, and NaN (its payload kept,
  made quiet as F16C and torch do).
* :func:`tile_halves`: the 64 values of one tile's group (``src[t, g, :]``, a
  weight tile's 64 output rows) into a float32 row, once per group, so the
  kernels' inner loops read float32 as before and compute the same bits. On x86
  with F16C (every AVX2 CPU, AVX-512 ones included) it is LLVM's ``fpext half
  → float`` (``vcvtph2ps``, 16 values per instruction); elsewhere a loop of
  :func:`half_to_float` (there LLVM's ``fpext`` would call ``__extendhfsf2``, a
  runtime function that Numba's JIT need not link).

The choice is made when Numba compiles, from the target's features (the host's,
or ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``'s), as :mod:`numba_pair_dot` does;
either way the values are the same. After editing this file, delete the cached
entries of its callers in ``kernels/__pycache__`` (see :mod:`numba_pair_dot`).
"""

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from rusteeze.errors import KernelError
from rusteeze.kernels.numba_checks import JIT

LANES = 64  # values per tile_halves call: a weight tile's rows (numba_quant_matmul.TILE)
_SUBNORMAL_STEP = np.float32(2.0**-24)  # float16's smallest subnormal


def half_bits(t: torch.Tensor) -> np.ndarray:
    """The uint16 numpy view (no copy) of a float16 CPU tensor: how the kernels take float16 arrays.

    Raises:
        KernelError: ``t`` is not a float16 CPU tensor.
    """
    if t.dtype is not torch.float16 or t.device.type != "cpu":
        raise KernelError(f"expected float16 scales on the CPU (the weight tiles' layout), got {t.dtype} on {t.device}")
    return t.view(torch.uint16).numpy()


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


def _halves_loop(src, t, g, dst, row):  # pragma: no cover - compiled (tile_halves without F16C)
    for i in range(LANES):
        dst[row, i] = half_to_float(src[t, g, i])


@intrinsic
def tile_halves(typingctx, src, t, g, dst, row):
    """dst[row, :64] = the float32 values of the float16 bits src[t, g, :64]; src [NT, C, 64] u16, dst [., >= 64] f32.

    Both arrays C-contiguous (the tiles are); the caller guarantees the shapes.
    """
    ints = all(isinstance(v, types.Integer) for v in (t, g, row))
    src_ok = isinstance(src, types.Array) and src.dtype == types.uint16 and src.ndim == 3 and src.layout == "C"
    dst_ok = isinstance(dst, types.Array) and dst.dtype == types.float32 and dst.ndim == 2 and dst.layout == "C"
    if not (ints and src_ok and dst_ok):
        return None
    sig = types.void(src, t, g, dst, row)

    def codegen(context, builder, sig, args):
        if not _f16c(context):
            return context.compile_internal(builder, _halves_loop, sig, args)
        src_v, t_v, g_v, dst_v, row_v = args
        t_v, g_v, row_v = (context.cast(builder, v, ty, types.intp) for v, ty in ((t_v, t), (g_v, g), (row_v, row)))
        return _emit_fpext(context, builder, sig, src_v, dst_v, t_v, g_v, row_v)

    return sig, codegen


def _emit_fpext(context, builder, sig, src_v, dst_v, t_v, g_v, row_v):
    """The F16C body: one <64 x i16> load, bitcast to <64 x half>, fpext to <64 x float>, one store."""
    src_ty, _, _, dst_ty, _ = sig.args
    zero = ir.Constant(t_v.type, 0)
    src_arr = context.make_array(src_ty)(context, builder, src_v)
    dst_arr = context.make_array(dst_ty)(context, builder, dst_v)
    s_ptr = cgutils.get_item_pointer(context, builder, src_ty, src_arr, (t_v, g_v, zero))
    d_ptr = cgutils.get_item_pointer(context, builder, dst_ty, dst_arr, (row_v, zero))
    halves = builder.load(builder.bitcast(s_ptr, ir.VectorType(ir.IntType(16), LANES).as_pointer()), align=2)
    floats = builder.fpext(
        builder.bitcast(halves, ir.VectorType(ir.HalfType(), LANES)), ir.VectorType(ir.FloatType(), LANES)
    )
    builder.store(floats, builder.bitcast(d_ptr, floats.type.as_pointer()), align=4)
    return context.get_dummy_value()
