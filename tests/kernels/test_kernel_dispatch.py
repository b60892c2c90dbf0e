"""Backend dispatch: lazy Triton import, per-device choice, clear errors."""

import subprocess
import sys

import pytest
import torch
from kernel_refs import randn

import rusteeze.kernels as kernels
from rusteeze.errors import KernelError
from rusteeze.kernels import OP_NAMES, get_ops, torch_ops, triton_ops


def test_importing_rusteeze_does_not_import_triton():
    code = "import sys, rusteeze, rusteeze.kernels; sys.exit('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "import rusteeze.kernels imported triton"
    assert result.stderr == ""


def test_triton_ops_exports_every_op_with_the_torch_parameters():
    import inspect

    for name in OP_NAMES:
        torch_params = list(inspect.signature(getattr(torch_ops, name)).parameters)
        triton_params = list(inspect.signature(getattr(triton_ops, name)).parameters)
        assert triton_params[: len(torch_params)] == torch_params, name


def test_auto_backend_uses_torch_for_cpu_tensors(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")

    def no_triton():
        raise AssertionError("auto dispatch loaded the Triton module for a CPU tensor")

    monkeypatch.setattr(kernels, "_triton_module", no_triton)
    x, w = randn(3, 8, seed=1), torch.ones(8)
    torch.testing.assert_close(get_ops("auto").rms_norm(x, w, 1e-6), torch_ops.rms_norm(x, w, 1e-6))


def test_triton_backend_runs_the_interpreter_on_cpu():
    x = randn(3, 40, seed=2)
    torch.testing.assert_close(get_ops("triton").silu_and_mul(x), torch_ops.silu_and_mul(x))


def test_triton_on_cpu_without_interpreter_is_a_kernel_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelError, match="TRITON_INTERPRET=1"):
        triton_ops.rms_norm(torch.zeros(2, 4), torch.ones(4), 1e-6)


def test_unknown_backend_is_a_kernel_error():
    with pytest.raises(KernelError, match="unknown kernel backend 'cuda'"):
        get_ops("cuda")
