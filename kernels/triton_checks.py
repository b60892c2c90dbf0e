"""Argument checks shared by the Triton launchers.

A Triton kernel trusts its pointers and strides: a wrong shape or dtype reads
garbage or writes past the end of a buffer. Every launcher therefore checks its
arguments on the host (shapes, dtypes, devices, strides: all free, no device
sync) and raises :class:`~rusteeze.errors.KernelError` with a message that names
the argument and what was expected.
"""

import os
from collections.abc import Iterable

import torch

from rusteeze.errors import KernelError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    shape: tuple[int | None, ...] | None = None,
    unit_last_stride: bool = True,
) -> torch.Tensor:
    """Check one tensor argument of a kernel.

    Args:
        op: the op's name, for the message.
        name: the argument's name, for the message.
        t: the value to check.
        ndim: required number of dimensions.
        dtypes: allowed dtypes.
        shape: required sizes, ``None`` for "any" (implies ``ndim``).
        unit_last_stride: require the last dimension to be contiguous.

    Returns:
        ``t``, unchanged.

    Raises:
        KernelError: when any requirement fails.
    """
    if not isinstance(t, torch.Tensor):
        raise KernelError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        raise KernelError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, (want, got) in enumerate(zip(shape, t.shape, strict=True)):
            if want is not None and want != got:
                raise KernelError(
                    f"{op}: {name} has shape {tuple(t.shape)}, expected size {want} in dimension {i} "
                    f"(expected {tuple('*' if s is None else s for s in shape)})"
                )
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            got = str(t.dtype).removeprefix("torch.")
            raise KernelError(f"{op}: {name} has dtype {got}, expected one of {allowed}")
    if unit_last_stride and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise KernelError(f"{op}: {name} must be contiguous in its last dimension (strides {t.stride()})")
    return t


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    """Check that all tensors live on one device that Triton can run on.

    CUDA tensors run compiled kernels; CPU tensors run only under the Triton
    interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported).

    Returns:
        The common device.

    Raises:
        KernelError: for mixed devices, or CPU tensors without the interpreter.
    """
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(dev != first for dev in devices.values()):
        listing = ", ".join(f"{n}={d}" for n, d in devices.items())
        raise KernelError(f"{op}: all tensors must be on one device, got {listing}")
    if first.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise KernelError(
            f"{op}: the Triton backend needs CUDA tensors (got CPU tensors); use kernel_backend='torch' "
            "or set TRITON_INTERPRET=1 before triton is imported"
        )
    if first.type not in ("cpu", "cuda"):
        raise KernelError(f"{op}: the Triton backend runs on CUDA tensors, got device {first}")
    return first
