"""Hot ops with two implementations: Triton kernels for CUDA, torch for the rest.

Use :func:`get_ops` to obtain a namespace of ops for a backend:

* ``"auto"``: Triton for CUDA tensors, torch otherwise (decided per call);
* ``"torch"``: always torch;
* ``"triton"``: always Triton; on CPU tensors this needs ``TRITON_INTERPRET=1``
  set before ``triton`` is first imported (that is how the tests run it).

Nothing here imports ``triton`` at import time: the Triton module is loaded
the first time a Triton op is actually called.
"""

import importlib
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
BACKENDS = ("auto", "triton", "torch")


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


def get_ops(backend: str = "auto") -> Ops:
    """Return the ops of one backend.

    Args:
        backend: "auto", "triton" or "torch".

    Raises:
        KernelError: for an unknown backend name.
    """
    if backend == "torch":
        return Ops(**{n: getattr(torch_ops, n) for n in OP_NAMES})
    if backend == "triton":
        return Ops(**{n: _lazy_triton(n) for n in OP_NAMES})
    if backend == "auto":
        return Ops(**{n: _auto(n) for n in OP_NAMES})
    raise KernelError(f"unknown kernel backend {backend!r}; use one of {', '.join(BACKENDS)}")
