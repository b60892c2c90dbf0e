"""Scratch arrays on the stack for Numba kernels: no heap allocation per call.

``np.empty`` in a compiled function is a heap allocation plus a reference count
(and a free when the function returns): ~70 ns. A quantized matmul calls its
tile function once per 64 output rows, and each tile needs a few small working
buffers: SmolLM2 decodes one token through ~3 200 tiles, so three ``np.empty``
per tile cost ~0.6 ms of a ~7 ms token. :func:`stack_pointer` reserves such a
buffer in the calling function's stack frame instead (an ``alloca`` in its entry
block, released when it returns), and ``numba.carray`` views it as an array of a
fixed shape: C-contiguous, without a reference count, valid only until the
function that made it returns (never return it or keep it).

    SCRATCH = ROWS * TILE  # a module constant: the element count must be known when the kernel compiles
    isum = numba.carray(stack_pointer(np.int32, SCRATCH), (ROWS, TILE))  # [ROWS, TILE] int32, contents undefined
"""

from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic(prefer_literal=True)
def stack_pointer(typingctx, dtype, count):
    """A pointer to ``count`` (a compile-time integer) elements of ``dtype`` in the caller's stack frame."""
    if not isinstance(count, types.IntegerLiteral) or not isinstance(dtype, (types.DTypeSpec, types.NumberClass)):
        return None
    elem = dtype.dtype
    sig = types.CPointer(elem)(dtype, count)

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, context.get_value_type(elem), size=count.literal_value)

    return sig, codegen
