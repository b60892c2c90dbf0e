"""Pieces shared by the Numba CPU kernels: compile options, a vectorizable exp, argument checks.

Compile options (:data:`JIT`): ``cache=True`` (compiled code persists next to
the source, keyed by the host CPU), ``error_model="numpy"`` (Python's
division-by-zero check would keep every loop with a division scalar),
``nogil=True``, and :data:`FASTMATH`: reassociation (so float32 reductions
vectorize), FMA contraction, no signed zeros, reciprocals. Not ``nnan``/``ninf``:
the kernels rely on -inf and must not turn NaN checks into assumptions.
Accumulators are typed ``np.float32``; a bare ``0.0`` is float64 and keeps a
loop scalar.

Numba compiles for the host (AVX-512 here, AVX2 elsewhere). The AVX2 code is
tested on an AVX-512 machine by compiling for Haswell into another cache:
``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx,+avx2,+fma,+f16c,+bmi,+bmi2,...``
(the features too: with the name alone numba keeps the host's, AVX-512
included) and ``NUMBA_CACHE_DIR=/tmp/...``; see docs/kernels.md.

Argument checks: a kernel trusts its arrays, so every wrapper checks tensors
cheaply (a fast path of a few attribute reads) and, when that fails, explains
what is wrong with :func:`~rusteeze.kernels.triton_checks.check_tensor` and
raises :class:`~rusteeze.errors.KernelError`.
"""

import numba
import numpy as np
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels.triton_checks import check_tensor

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True}

_EXP_LO = np.float32(-87.0)  # exp(-87) ~ 1.6e-38, still a normal float32
_EXP_HI = np.float32(88.0)


@numba.njit(inline="always", **JIT)
def exp_parts(v):
    """exp(v) as (mantissa polynomial, int32 bits of 2**n): the product of the two is exp(v).

    Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial;
    ~1 ulp on [-87, 88], inputs clamped to that range). Numba has no vector
    exp without Intel's SVML, so ``np.exp`` in a loop is a scalar libm call;
    this one vectorizes. The caller stores the int32 bits into an int32 array
    and multiplies by its float32 view (a bit cast), in a second loop.
    """
    v = min(max(v, _EXP_LO), _EXP_HI)
    n = np.floor(v * np.float32(1.44269504088896341) + np.float32(0.5))
    r = v - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p, np.int32((n + np.float32(127.0)) * np.float32(8388608.0))  # the bits of 2**n, exactly


def array(t: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor (parameters are detached first)."""
    return t.detach().numpy() if t.requires_grad else t.numpy()


def is_f32(t: object, ndim: int) -> bool:
    """True for a contiguous CPU float32 tensor of ``ndim`` dimensions: the kernels' fast path."""
    return (
        isinstance(t, torch.Tensor) and t.dtype is torch.float32 and t.dim() == ndim and t.is_cpu and t.is_contiguous()
    )


def check_cpu(op: str, **tensors: torch.Tensor) -> None:
    """Raise KernelError unless every tensor is a CPU tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise KernelError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_cpu:
            raise KernelError(f"{op}: the Numba backend runs on CPU tensors, got {name} on {t.device}")


def index_array(op: str, name: str, t: object, dtype: torch.dtype, ndim: int) -> np.ndarray:
    """Numpy view of an index tensor as ``dtype`` (int32 or int64 accepted, converted when they differ)."""
    if isinstance(t, torch.Tensor) and t.dtype is dtype and t.dim() == ndim and t.is_cpu and t.is_contiguous():
        return t.numpy()
    check_tensor(op, name, t, ndim=ndim, dtypes=(torch.int32, torch.int64), unit_last_stride=False)
    check_cpu(op, **{name: t})
    if t.dtype is not dtype:
        t = t.to(dtype)
    return t.contiguous().numpy()
