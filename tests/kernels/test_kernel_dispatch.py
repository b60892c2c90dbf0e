"""Backend dispatch: lazy Triton import, per-device choice, clear errors."""

import os
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


def test_auto_resolves_once_to_triton_on_cuda_and_numba_on_cpu():
    from rusteeze.kernels import resolve_backend

    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "numba"
    assert resolve_backend("torch", "cpu") == resolve_backend("torch", "cuda") == "torch"


def test_a_backend_the_device_cannot_run_is_a_start_up_error_naming_the_flag(monkeypatch):
    from rusteeze.kernels import resolve_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelError, match="--kernel-backend triton needs a CUDA device"):
        resolve_backend("triton", "cpu")
    with pytest.raises(KernelError, match="--kernel-backend numba runs on the CPU only"):
        resolve_backend("numba", "cuda")
    with pytest.raises(KernelError, match="unknown kernel backend 'cuda'"):
        resolve_backend("cuda", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the tests' interpreter mode runs Triton on CPU tensors
    assert resolve_backend("triton", "cpu") == "triton"


def test_loading_on_cpu_with_auto_runs_the_numba_backend(tiny_model_dirs):
    from rusteeze.loader.model_loader import load_model_from_path

    loaded = load_model_from_path(tiny_model_dirs["llama"], device="cpu")
    assert loaded.kernel_backend == "numba"
    assert loaded.model.layers[0].self_attn.ops.rotary_store_kv is not None


def test_first_load_says_it_compiles_and_later_loads_do_not(tmp_path):
    """The first-run line appears only while Numba's cache lacks the kernels (a fresh NUMBA_CACHE_DIR)."""
    code = "from rusteeze.kernels import numba_ops; numba_ops.prepare()"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "compiling CPU kernels for this machine (first run only)" in first.stderr
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "compiling" not in again.stderr
