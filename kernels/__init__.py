"""Hot ops with three implementations: Triton kernels for CUDA, Numba kernels for CPUs, torch as the reference.

Use :func:`get_ops` to obtain a namespace of ops for a backend:

* ``"auto"``: Triton for CUDA tensors, torch otherwise (decided per call); the
  loader never passes it: :func:`resolve_backend` turns it into Triton on CUDA
  and Numba on CPU, once, when the model is loaded;
* ``"torch"``: always torch;
* ``"triton"``: always Triton; on CPU tensors this needs ``TRITON_INTERPRET=1``
  set before ``triton`` is first imported (that is how the tests run it);
* ``"numba"``: the Numba CPU kernels (``numba_ops``) for every op but the
  quantized matmuls, which stay torch's.

Nothing here imports ``triton`` or ``numba`` at import time: the Triton module
is loaded the first time a Triton op is actually called, the Numba module by
``get_ops("numba")``.
"""

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from rusteeze.errors import KernelError
from rusteeze.kernels import torch_ops

OP_NAMES = (
    "rms_norm",
    "fused_add_rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
    "paged_attention",
    "int8_matmul",
    "int4_matmul",
)
BACKENDS = ("auto", "triton", "numba", "torch")
NUMBA_OP_NAMES = tuple(n for n in OP_NAMES if n not in ("int8_matmul", "int4_matmul"))


@dataclass(frozen=True)
class Ops:
    """One callable per op in :data:`OP_NAMES`, all from the chosen backend."""

    rms_norm: Callable
    fused_add_rms_norm: Callable
    rotary_embedding: Callable
    silu_and_mul: Callable
    store_kv: Callable
    paged_attention: Callable
    int8_matmul: Callable
    int4_matmul: Callable
    # rotary_embedding + store_kv in one pass, where the backend has it (numba); None elsewhere.
    rotary_store_kv: Callable | None = None


def _triton_module() -> ModuleType:
    return importlib.import_module("rusteeze.kernels.triton_ops")


def _lazy_triton(name: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(_triton_module(), name)(*args, **kwargs)

    call.__name__ = name
    return call


def _auto(name: str) -> Callable:
    torch_fn = getattr(torch_ops, name)

    def call(first, *args, **kwargs):
        if first.is_cuda:
            return getattr(_triton_module(), name)(first, *args, **kwargs)
        return torch_fn(first, *args, **kwargs)

    call.__name__ = name
    return call


def resolve_backend(backend: str, device_type: str) -> str:
    """The concrete backend a model on ``device_type`` ("cpu" or "cuda") runs: chosen once, at load.

    "auto" is Triton on CUDA and Numba on CPU. Triton on CPU tensors runs only
    under ``TRITON_INTERPRET=1`` (the tests); Numba only on CPU tensors.

    Raises:
        KernelError: an unknown name, or a backend this device cannot run (naming the flag).
    """
    if backend not in BACKENDS:
        raise KernelError(f"unknown kernel backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device_type == "cuda" else "numba"
    if backend == "triton" and device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise KernelError(
            "--kernel-backend triton needs a CUDA device, and this model runs on the CPU; "
            "use --kernel-backend auto (Numba on CPU) or torch"
        )
    if backend == "numba" and device_type != "cpu":
        raise KernelError(
            f"--kernel-backend numba runs on the CPU only, and this model runs on {device_type}; "
            "use --kernel-backend auto (Triton on CUDA) or torch"
        )
    return backend


def get_ops(backend: str = "auto") -> Ops:
    """Return the ops of one backend.

    Args:
        backend: "auto", "triton", "numba" or "torch".

    Raises:
        KernelError: for an unknown backend name.
    """
    if backend == "numba":
        numba_ops = importlib.import_module("rusteeze.kernels.numba_ops")
        ops = {n: getattr(numba_ops, n) if n in NUMBA_OP_NAMES else getattr(torch_ops, n) for n in OP_NAMES}
        return Ops(**ops, rotary_store_kv=numba_ops.rotary_store_kv)
    if backend == "torch":
        return Ops(**{n: getattr(torch_ops, n) for n in OP_NAMES})
    if backend == "triton":
        return Ops(**{n: _lazy_triton(n) for n in OP_NAMES})
    if backend == "auto":
        return Ops(**{n: _auto(n) for n in OP_NAMES})
    raise KernelError(f"unknown kernel backend {backend!r}; use one of {', '.join(BACKENDS)}")
